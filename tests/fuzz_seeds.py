"""
The seed corpus of each fuzz target (tests/fuzz_targets.py), made from the captured real frames in tests/fixtures:
``python bench/fuzz.py --write-seeds`` writes them to tests/fixtures/fuzz/<target>/, and tests/test_fuzz.py reads
them from there.  HTTP/1.1 has no captures; its seeds are the request and response shapes the codec tests use.
"""

import glob
import os

from txmesh.protocols.h2 import frames as F

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
DUBBO = os.path.join(FIXTURES, "dubbo-frames")
H2 = os.path.join(FIXTURES, "h2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HTTP1_REQUESTS = [
    b"GET /a?x=1 HTTP/1.1\r\nHost: app.svc\r\nAccept: */*\r\n\r\n",
    b"POST /up HTTP/1.1\r\nHost: app.svc\r\nContent-Length: 5\r\n\r\nhello"
    b"GET /b HTTP/1.1\r\nHost: app.svc\r\nConnection: close\r\n\r\n",
    b"PUT /c HTTP/1.1\r\nHost: app.svc\r\nTransfer-Encoding:\tchunked\r\n\r\n3;ext=\"q\"\r\nabc\r\n1\r\nd\r\n0\r\n"
    b"x-trailer: t\r\n\r\n",
    b"\r\nGET http://h.svc:80/p HTTP/1.0\r\nConnection: keep-alive\r\nExpect: 100-continue\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: [::1]:80\r\n\r\nCONNECT h.svc:443 HTTP/1.1\r\nHost: h.svc:443\r\n\r\nxyz",
    b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: upgrade, x-a\r\nx-a: 1\r\nte: trailers\r\n\r\n",
]
HTTP1_RESPONSES = [
    b"\x00HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 204 No Content\r\n\r\n"
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\nt: 1\r\n\r\n",
    b"\x01HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nHTTP/1.0 200 OK\r\n\r\nuntil close",
    b"\x03HTTP/1.1 200 Connection established\r\n\r\ntunnel bytes",
    b"\x80HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\x81\x00",
    b"\x00HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\nHTTP/1.1 500 Oops\r\nConnection: close\r\n"
    b"Content-Length: 0\r\n\r\n",
]


def _read(path, mode="rb"):
    with open(path, mode) as f:
        return f.read()


def h2Frames(data):
    """(type, flags, stream id, payload) of each frame in one direction of a capture (preface skipped)."""
    if data.startswith(F.PREFACE):
        data = data[24:]
    out, pos = [], 0
    while pos + 9 <= len(data):
        hi, lo, ftype, flags, sid = F.HEADER.unpack_from(data, pos)
        n = hi << 16 | lo
        out.append((ftype, flags, sid, data[pos + 9:pos + 9 + n]))
        pos += 9 + n
    return out


def dubboFrames():
    """(name, bytes) of every captured Dubbo frame."""
    out = []
    for path in sorted(glob.glob(os.path.join(DUBBO, "*", "*.hex"))):
        name = os.path.basename(os.path.dirname(path)) + "--" + os.path.basename(path)[:-4]
        out.append((name, bytes.fromhex(_read(path, "r"))))
    return out


def seeds():
    """{target: [(file name, bytes)]}."""
    h2 = {os.path.basename(p)[:-4]: _read(p) for p in sorted(glob.glob(os.path.join(H2, "*.bin")))}
    out = {
        "http1-request": [("request-%d" % i, r) for i, r in enumerate(HTTP1_REQUESTS)],
        "http1-response": [("response-%d" % i, r) for i, r in enumerate(HTTP1_RESPONSES)],
        "h2-server": [(k, v) for k, v in h2.items() if k.endswith(".c2s")],
        "h2-client": [(k, v) for k, v in h2.items() if k.endswith(".s2c")],
    }
    blocks, messages = [], []
    for k, v in h2.items():
        for i, (ftype, flags, sid, payload) in enumerate(h2Frames(v)):
            if ftype == F.HEADERS and flags & F.END_HEADERS and not flags & (F.PADDED | F.PRIORITY_FLAG):
                blocks.append(payload)
            elif ftype == F.DATA and k.startswith("grpcio") and payload:
                messages.append(("%s-%d" % (k, i), b"\x10\x00" + payload))
    # HPACK blocks of one connection in a row (0xffff separated), so later ones use the dynamic table
    out["hpack"] = [("block-%d" % i, b) for i, b in enumerate(blocks)] + [
        ("connection-%s" % k, b"\xff\xff".join(p for t, f, s, p in h2Frames(v)
                                                if t == F.HEADERS and f & F.END_HEADERS and not f & 0x28))
        for k, v in h2.items()]
    out["grpc"] = messages + [("grpc-timeout", b"\x00\x0512345678m"), ("tiny-limit", b"\x00\x01\x00\x00\x00\x00\x05ab")]
    frames = dubboFrames()
    # every distinct kind of frame once (the first of each file name suffix), and a few pipelined pairs
    kinds = {}
    for name, data in frames:
        kinds.setdefault(name.split("-", 3)[-1] + name.split("--")[0][:6], (name, data))
    chosen = sorted(kinds.values())[:40]
    out["dubbo"] = chosen + [("pipelined-%d" % i, chosen[i][1] + chosen[i + 1][1]) for i in range(0, 10, 2)]
    out["hessian2"] = [(name, data[16:]) for name, data in chosen if len(data) > 17]
    out["config"] = [(os.path.basename(p), _read(p)) for p in sorted(glob.glob(os.path.join(ROOT, "etc", "*.yaml")))]
    out["config"].append(("minimal.yaml", b"listeners:\n  - {name: l, protocol: http, address: 'tcp:0',\n"
                          b"     route_config: {virtual_hosts: [{name: a, domains: ['*'], routes: [{match: {prefix: /},"
                          b" route: {cluster: c}}]}]}}\nclusters: [{name: c, endpoints: [{address: '127.0.0.1:1'}]}]\n"))
    return out


def load(target):
    """The seed corpus of ``target`` as committed: [(file name, bytes)], sorted by name."""
    d = os.path.join(FIXTURES, "fuzz", target)
    return [(n, _read(os.path.join(d, n))) for n in sorted(os.listdir(d))]


__all__ = ["seeds", "load", "h2Frames", "dubboFrames"]
