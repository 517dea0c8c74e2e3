"""
CPU cost of decoding a chunked request body of many tiny chunks: N one-byte chunks (default a million) fed to the
HTTP/1.1 RequestDecoder in 64 KiB reads, as a socket would deliver them.  Usage: python bench/chunked.py [N]
"""

import sys
import time

from txmesh.protocols.http1.codec import BodyData, MessageComplete, RequestDecoder

READ = 65536


def main(n=1000000):
    head = b"POST /upload HTTP/1.1\r\nHost: app.svc\r\nTransfer-Encoding: chunked\r\n\r\n"
    data = head + b"1\r\nx\r\n" * n + b"0\r\n\r\n"
    reads = [data[i:i + READ] for i in range(0, len(data), READ)]
    decoder = RequestDecoder()
    got = 0
    done = False
    start = time.process_time()
    for piece in reads:
        for ev in decoder.feed(piece):
            t = type(ev)
            if t is BodyData:
                got += len(ev.data)
            elif t is MessageComplete:
                done = True
    cpu = time.process_time() - start
    assert got == n and done, (got, done)
    print("%d one-byte chunks (%d bytes) in %d reads of 64 KiB: %.3f CPU seconds" % (n, len(data), len(reads), cpu))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000000)
