"""
A scriptable upstream for the integration tests, run as a subprocess:

    python tests/upstream_server.py HTTP_PORT RAW_PORT [DELAY_MS]

DELAY_MS (optional) delays every HTTP answer by that many milliseconds (a slow host).

HTTP_PORT serves (twisted.web):
  /echo...          JSON of method, path, headers, body length and sha256 of the body
  /bytes/N          N bytes of b"x" with Content-Length
  /chunked/N/K      K chunks of N bytes (chunked encoding)
  /slow/MS          answers after MS milliseconds
  /status/N         status N with a short body
RAW_PORT answers every connection with raw bytes chosen by the first request line's path:
  /bad-framing      a response with both Content-Length and Transfer-Encoding
  /garbage          not HTTP at all
  /reset            closes the connection without answering
  /truncated        promises 100 bytes, sends 10, closes
  /trailers         a chunked response with a trailer field (x-checksum: abc)
"""

import hashlib
import json
import sys

from twisted.internet import protocol, reactor
from twisted.web import resource, server


DELAY = float(sys.argv[3]) / 1000.0 if __name__ == "__main__" and len(sys.argv) > 3 else 0.0


class Upstream(resource.Resource):
    isLeaf = True

    def render(self, request):
        if not DELAY:
            return self.answer(request)

        def later():
            if request._disconnected:
                return
            body = self.answer(request)
            if body is not server.NOT_DONE_YET:
                request.write(body)
                request.finish()

        reactor.callLater(DELAY, later)
        return server.NOT_DONE_YET

    def answer(self, request):
        parts = request.path.decode().strip("/").split("/")
        kind = parts[0]
        if kind == "bytes":
            n = int(parts[1])
            request.setHeader(b"content-length", b"%d" % n)
            return b"x" * n
        if kind == "chunked":
            n, k = int(parts[1]), int(parts[2])
            for _ in range(k):
                request.write(b"y" * n)
            request.finish()
            return server.NOT_DONE_YET
        if kind == "slow":
            ms = int(parts[1])

            def later():
                if not request._disconnected:
                    request.write(b"slow done\n")
                    request.finish()

            reactor.callLater(ms / 1000.0, later)
            return server.NOT_DONE_YET
        if kind == "status":
            request.setResponseCode(int(parts[1]))
            return b"status %s\n" % parts[1].encode()
        body = request.content.read()
        out = {
            "method": request.method.decode(),
            "path": request.uri.decode(),
            "headers": [[k.decode().lower(), v.decode()] for k, vs in request.requestHeaders.getAllRawHeaders()
                        for v in vs],
            "body_length": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "port": request.getHost().port,
        }
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"x-upstream-port", str(request.getHost().port).encode())
        return json.dumps(out).encode()


RAW = {
    b"/bad-framing": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"/garbage": b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
    b"/reset": b"",
    b"/truncated": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
    b"/trailers": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n"
                   b"Connection: close\r\n\r\n5\r\nhello\r\n0\r\nx-checksum: abc\r\n\r\n"),
}


class Raw(protocol.Protocol):
    def dataReceived(self, data):
        line = data.split(b"\r\n", 1)[0].split(b" ")
        path = line[1] if len(line) > 1 else b""
        if path.startswith(b"/raw/"):
            path = path[4:]
        self.transport.write(RAW.get(path, b""))
        self.transport.loseConnection()


if __name__ == "__main__":
    site = server.Site(Upstream())
    site.displayTracebacks = False
    reactor.listenTCP(int(sys.argv[1]), site, interface="127.0.0.1")
    f = protocol.Factory.forProtocol(Raw)
    reactor.listenTCP(int(sys.argv[2]), f, interface="127.0.0.1")
    print("ready", flush=True)
    reactor.run()
