"""
Tests for txmesh.protocols.http1.codec: every event sequence is checked on the whole input, byte by byte and on
seeded random splits; every request-smuggling defence has its own case with the status the server answers.
"""

import random

import pytest

from txmesh.errors import HTTPCodecError
from txmesh.protocols.http1.codec import (
    HOP_BY_HOP, LAST_CHUNK, BodyData, InterimResponse, MessageComplete, RequestDecoder, RequestStarted,
    ResponseDecoder, ResponseStarted, TunnelData, encodeChunk, encodeRequestHead, encodeResponseHead,
    encodeTrailers)
from txmesh.stream import HeaderMap, RequestHead, ResponseHead


def splits(raw):
    """The ways the input is cut: whole, byte by byte, and five seeded random splits."""
    yield "whole", [raw]
    yield "bytes", [raw[i:i + 1] for i in range(len(raw))]
    rng = random.Random(len(raw))
    for k in range(5):
        cuts = sorted(rng.sample(range(1, len(raw)), min(len(raw) - 1, rng.randint(1, 8))))
        yield "random%d" % k, [raw[a:b] for a, b in zip([0] + cuts, cuts + [len(raw)])]


def norm(ev):
    if isinstance(ev, RequestStarted):
        h = ev.head
        return ("request", h.method, h.path, h.authority, list(h.headers.items()), h.version, h.contentLength,
                ev.keepAlive, ev.expectContinue, ev.chunked, ev.upgrade)
    if isinstance(ev, ResponseStarted):
        h = ev.head
        return ("response", h.status, h.reason, list(h.headers.items()), h.version, h.contentLength, ev.keepAlive,
                ev.chunked)
    if isinstance(ev, InterimResponse):
        return ("interim", ev.status, list(ev.headers.items()))
    if isinstance(ev, MessageComplete):
        return ("end", None if ev.trailers is None else list(ev.trailers.items()))
    if isinstance(ev, (BodyData, TunnelData)):
        return ("body" if isinstance(ev, BodyData) else "tunnel", ev.data)
    if isinstance(ev, HTTPCodecError):
        return ("error", ev.status)
    raise AssertionError(ev)


def decode(decoder, pieces, eof=False):
    """Feed the pieces; normalised events with adjacent body/tunnel bytes merged, ending at the first error."""
    out = []
    try:
        for piece in pieces:
            out.extend(norm(e) for e in decoder.feed(piece))
            if out and out[-1][0] == "error":
                break
        else:
            if eof:
                out.extend(norm(e) for e in decoder.eof())
    except HTTPCodecError as e:
        out.append(("error", e.status))
    merged = []
    for ev in out:
        if merged and ev[0] in ("body", "tunnel") and merged[-1][0] == ev[0]:
            merged[-1] = (ev[0], merged[-1][1] + ev[1])
        else:
            merged.append(ev)
    return merged


def checkRequests(raw, expected, **kw):
    for name, pieces in splits(raw):
        assert decode(RequestDecoder(**kw), pieces) == expected, name


def checkResponses(methods, raw, expected, eof=False):
    for name, pieces in splits(raw):
        d = ResponseDecoder()
        for m in methods:
            d.expect(m)
        assert decode(d, pieces, eof) == expected, name


def req(method=b"GET", path=b"/", authority=b"h", headers=(), version=(1, 1), length=None, keepAlive=True,
        expectContinue=False, chunked=False, upgrade=None):
    return ("request", method, path, authority, list(headers), version, length, keepAlive, expectContinue, chunked,
            upgrade)


def resp(status=200, reason=b"OK", headers=(), version=(1, 1), length=None, keepAlive=True, chunked=False):
    return ("response", status, reason, list(headers), version, length, keepAlive, chunked)


END = ("end", None)


# -- requests ------------------------------------------------------------------------------------------------------

def test_simpleGet():
    """Host becomes the authority; hop-by-hop fields and those named in Connection are gone; te: trailers stays."""
    raw = (b"GET /a?b=1 HTTP/1.1\r\nHost: example.com:8080\r\nUser-Agent: curl/8  \r\nConnection: x-hop\r\n"
           b"X-Hop: 1\r\nKeep-Alive: 5\r\nProxy-Connection: keep-alive\r\nTE: trailers, deflate\r\n"
           b"Trailer: x\r\nUpgrade: h2c\r\nAccept: */*\r\n\r\n")
    checkRequests(raw, [req(path=b"/a?b=1", authority=b"example.com:8080",
                            headers=[(b"user-agent", b"curl/8"), (b"te", b"trailers"), (b"accept", b"*/*")]), END])


def test_pipelined():
    raw = (b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n"
           b"POST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
           b"POST /3 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5;name=\"v\"\r\nhello\r\n1\r\n!\r\n0\r\nX-Sum: 9\r\nContent-Length: 3\r\n\r\n"
           b"\r\nGET /4 HTTP/1.1\r\nHost: h\r\n\r\n")
    checkRequests(raw, [req(path=b"/1"), END,
                        req(b"POST", b"/2", length=5), ("body", b"hello"), END,
                        req(b"POST", b"/3", chunked=True), ("body", b"hello!"), ("end", [(b"x-sum", b"9")]),
                        req(path=b"/4"), END])


def test_chunkedWithoutTrailers():
    raw = (b"PUT /u HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\nA\r\n0123456789\r\n000\r\n\r\n"
           b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    checkRequests(raw, [req(b"PUT", b"/u", chunked=True), ("body", b"0123456789"), END, req(), END])


def test_manyRequestsOneDecoder():
    """The reused parser keeps decoding after bodiless and bodied requests alike."""
    d = RequestDecoder()
    for i in range(50):
        body = b"x" * (i % 3)
        raw = b"POST /%d HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n%s" % (i, len(body), body)
        evs = decode(d, [raw])
        assert evs[0] == req(b"POST", b"/%d" % i, length=len(body))
        assert evs[-1] == END


def test_absoluteForm():
    """An absolute-form target gives path and authority; the authority wins over Host."""
    checkRequests(b"GET http://up:81/x/y?q HTTP/1.1\r\nHost: other\r\n\r\n", [req(path=b"/x/y?q", authority=b"up:81"), END])
    checkRequests(b"GET HTTP://up?q HTTP/1.1\r\nHost: up\r\n\r\n", [req(path=b"/?q", authority=b"up"), END])
    checkRequests(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", [req(b"OPTIONS", b"*"), END])


@pytest.mark.parametrize("value", [b"\tchunked", b"chunked\t", b" \tchunked \t", b"\t\tCHUNKED", b"chunked "])
def test_transferEncodingWithTabsAsOWS(value):
    """OWS around a field value is SP or HTAB (RFC 9110 5.6.3): ``Transfer-Encoding:<HTAB>chunked`` is chunked."""
    raw = (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:%s\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
           b"GET /2 HTTP/1.1\r\nHost: h\r\n\r\n" % value)
    checkRequests(raw, [req(b"POST", chunked=True), ("body", b"abc"), END, req(path=b"/2"), END])
    checkResponses([b"GET"], b"HTTP/1.1 200 OK\r\nTransfer-Encoding:%s\r\n\r\n2\r\nok\r\n0\r\n\r\n" % value,
                   [resp(chunked=True), ("body", b"ok"), END])


def test_tabsAsOWSInOtherFields():
    """HTAB is OWS in Content-Length, Connection (and its list), TE, Expect, Upgrade and Host too; trailers alike."""
    raw = (b"POST / HTTP/1.1\r\nHost:\th:81\t\r\nContent-Length:\t2\t\r\nConnection:\tkeep-alive\t,\tx-hop\t\r\n"
           b"X-Hop: 1\r\nTE:\tdeflate\t,\ttrailers\t\r\nExpect:\t100-continue\t\r\n\r\nok")
    checkRequests(raw, [req(b"POST", authority=b"h:81", headers=[(b"te", b"trailers"), (b"expect", b"100-continue")],
                            length=2, expectContinue=True), ("body", b"ok"), END])
    raw = b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade:\twebsocket\t\r\nConnection:\tUpgrade\t\r\n\r\n"
    checkRequests(raw, [req(path=b"/ws", upgrade=b"websocket"), END])
    raw = (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-Sum:\t9\t\r\n\r\n")
    checkRequests(raw, [req(b"POST", chunked=True), ("end", [(b"x-sum", b"9")])])
    raw = b"HTTP/1.1 200 OK\r\nContent-Length:\t2\t\r\nConnection:\tclose\t\r\n\r\nok"
    checkResponses([b"GET"], raw, [resp(length=2, keepAlive=False), ("body", b"ok"), END])


def test_chunkExtensionsGrammar():
    """Extensions are ``BWS ; BWS token [BWS = BWS (token / quoted-string)]`` (RFC 9112 7.1.1), and are dropped."""
    raw = (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"1;a\r\nx\r\n1 ;a=b\r\ny\r\n1\t;\ta\t=\t\"q \\\" ;\"\r\nz\r\n2;a=1;b;c=\"\"\r\n!!\r\n0;last\r\n\r\n")
    checkRequests(raw, [req(b"POST", chunked=True), ("body", b"xyz!!"), END])


@pytest.mark.parametrize("host", [b"app.svc", b"app.svc:8080", b"10.0.0.1:80", b"[::1]", b"[2001:db8::1]:443",
                                  b"[v1.fe80::a+en1]", b"a%20b", b"x_y~z!$&'()*+,;=", b"h:", b""])
def test_hostForms(host):
    """Host is ``uri-host [":" port]``: reg-name (IPv4 is one), IP-literal, empty (RFC 9110 7.2)."""
    checkRequests(b"GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % host, [req(authority=host), END])


def test_requestTargetForms():
    """origin-form, absolute-form (its authority wins over Host), asterisk-form for OPTIONS, authority-form for
    CONNECT (RFC 9112 3.2)."""
    checkRequests(b"GET /a/b?c=d&e HTTP/1.1\r\nHost: h\r\n\r\n", [req(path=b"/a/b?c=d&e"), END])
    checkRequests(b"GET //a HTTP/1.1\r\nHost: h\r\n\r\n", [req(path=b"//a"), END])
    checkRequests(b"GET https://[::1]:8443/x HTTP/1.1\r\nHost: h\r\n\r\n", [req(path=b"/x", authority=b"[::1]:8443"), END])
    checkRequests(b"GET http://up HTTP/1.1\r\nHost: h\r\n\r\n", [req(path=b"/", authority=b"up"), END])
    checkRequests(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", [req(b"OPTIONS", b"*"), END])
    # RFC 9112 3.2.4: an OPTIONS absolute-form target with an empty path is forwarded in asterisk-form
    checkRequests(b"OPTIONS http://up:81 HTTP/1.1\r\nHost: up\r\n\r\n", [req(b"OPTIONS", b"*", b"up:81"), END])
    checkRequests(b"OPTIONS http://up/ HTTP/1.1\r\nHost: up\r\n\r\n", [req(b"OPTIONS", b"/", b"up"), END])
    for target in (b"db:5432", b"10.0.0.1:443", b"[::1]:443"):
        checkRequests(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, target),
                      [req(b"CONNECT", b"", target, keepAlive=False, upgrade=b"connect"), END])


def test_connectHoldsBytesUntilTunnel():
    d = RequestDecoder()
    evs = decode(d, [b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\nearly"])
    assert evs == [req(b"CONNECT", b"", b"db:5432", keepAlive=False, upgrade=b"connect"), END]
    assert decode(d, [b" bytes"]) == []
    assert [norm(e) for e in d.startTunnel()] == [("tunnel", b"early bytes")]
    assert decode(d, [b"GET / HTTP/1.1\r\n"]) == [("tunnel", b"GET / HTTP/1.1\r\n")]


def test_upgradeStaysHttpUntilAccepted():
    raw = (b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
           b"GET /2 HTTP/1.1\r\nHost: h\r\n\r\n")
    checkRequests(raw, [req(path=b"/ws", upgrade=b"websocket"), END, req(path=b"/2"), END])
    d = RequestDecoder()
    decode(d, [raw[:raw.index(b"GET /2")]])
    assert d.startTunnel() == []
    assert decode(d, [b"\x81\x05hello"]) == [("tunnel", b"\x81\x05hello")]


def test_upgradeWithoutConnectionIgnored():
    checkRequests(b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n", [req(), END])


def test_http10KeepAlive():
    """HTTP/1.0 keeps the connection only with Connection: keep-alive; otherwise later bytes are ignored."""
    checkRequests(b"GET /a HTTP/1.0\r\n\r\nGET /b HTTP/1.0\r\n\r\n",
                  [req(path=b"/a", authority=b"", version=(1, 0), keepAlive=False), END])
    checkRequests(b"GET /a HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\nGET /b HTTP/1.0\r\nHost: h\r\n\r\n",
                  [req(path=b"/a", authority=b"", version=(1, 0)), END,
                   req(path=b"/b", version=(1, 0), keepAlive=False), END])
    checkRequests(b"GET /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n",
                  [req(path=b"/a", keepAlive=False), END])


def test_expectContinue():
    raw = b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nContent-Length: 2\r\n\r\nok"
    checkRequests(raw, [req(b"POST", headers=[(b"expect", b"100-Continue")], length=2, expectContinue=True),
                        ("body", b"ok"), END])


def test_leadingEmptyLinesIgnored():
    checkRequests(b"\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n", [req(), END])


BAD_REQUESTS = {
    "cl_and_te": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te_and_cl": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
    "cl_duplicate_equal": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    "cl_empty": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: \r\n\r\n",
    "cl_plus": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\nhello",
    "cl_minus": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -5\r\n\r\nhello",
    "cl_list": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\nhello",
    "cl_nondigit": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5x\r\n\r\nhello",
    "cl_hex": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x5\r\n\r\nhello",
    "cl_huge": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999999\r\n\r\n",
    "te_chunked_then_token": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\tx\r\n\r\n0\r\n\r\n",
    "te_vtab": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n",
    "te_xchunked": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "te_chunked_identity": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "te_gzip_chunked": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "te_identity": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity\r\n\r\n",
    "te_repeated": (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"0\r\n\r\n"),
    "te_http10": b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "obs_fold": b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n 2\r\n\r\n",
    "obs_fold_tab": b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\t2\r\n\r\n",
    "bare_cr": b"GET / HTTP/1.1\r\nHost: h\rX-A: 1\r\n\r\n",
    "bare_lf_field": b"GET / HTTP/1.1\r\nHost: h\nX-A: 1\r\n\r\n",
    "bare_lf_line": b"GET / HTTP/1.1\nHost: h\r\n\r\n",
    "bare_lf_end": b"GET / HTTP/1.1\r\nHost: h\n\n",
    "nul_value": b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\x00b\r\n\r\n",
    "nul_name": b"GET / HTTP/1.1\r\nHost: h\r\nX\x00A: 1\r\n\r\n",
    "nul_target": b"GET /\x00 HTTP/1.1\r\nHost: h\r\n\r\n",
    "empty_name": b"GET / HTTP/1.1\r\nHost: h\r\n: 1\r\n\r\n",
    "space_before_colon": b"GET / HTTP/1.1\r\nHost : h\r\n\r\n",
    "non_token_name": b"GET / HTTP/1.1\r\nHost: h\r\nX(A): 1\r\n\r\n",
    "missing_host": b"GET / HTTP/1.1\r\nX: 1\r\n\r\n",
    "two_hosts": b"GET / HTTP/1.1\r\nHost: h\r\nHost: h\r\n\r\n",
    "host_userinfo": b"GET / HTTP/1.1\r\nHost: u@h\r\n\r\n",
    "host_space": b"GET / HTTP/1.1\r\nHost: app.svc evil\r\n\r\n",
    "host_tab_inside": b"GET / HTTP/1.1\r\nHost: app\tsvc\r\n\r\n",
    "host_slash": b"GET / HTTP/1.1\r\nHost: app.svc/x\r\n\r\n",
    "host_quote": b"GET / HTTP/1.1\r\nHost: \"app\"\r\n\r\n",
    "host_bad_port": b"GET / HTTP/1.1\r\nHost: app.svc:8o\r\n\r\n",
    "host_long_port": b"GET / HTTP/1.1\r\nHost: app.svc:123456\r\n\r\n",
    "host_two_ports": b"GET / HTTP/1.1\r\nHost: app.svc:80:81\r\n\r\n",
    "host_bad_pct": b"GET / HTTP/1.1\r\nHost: a%2g\r\n\r\n",
    "host_bad_ipv6": b"GET / HTTP/1.1\r\nHost: [::g]\r\n\r\n",
    "host_ipv6_unbracketed": b"GET / HTTP/1.1\r\nHost: ::1\r\n\r\n",
    "host_obs_text": b"GET / HTTP/1.1\r\nHost: caf\xc3\xa9\r\n\r\n",
    "absolute_bad_authority": b"GET http://a,b:x/ HTTP/1.1\r\nHost: h\r\n\r\n",
    "absolute_userinfo": b"GET http://u@h/ HTTP/1.1\r\nHost: h\r\n\r\n",
    "absolute_empty_host": b"GET http:///x HTTP/1.1\r\nHost: h\r\n\r\n",
    "absolute_fragment": b"GET http://h/x#f HTTP/1.1\r\nHost: h\r\n\r\n",
    "absolute_other_scheme": b"GET ftp://h/x HTTP/1.1\r\nHost: h\r\n\r\n",
    "origin_fragment": b"GET /x#f HTTP/1.1\r\nHost: h\r\n\r\n",
    "asterisk_not_options": b"GET * HTTP/1.1\r\nHost: h\r\n\r\n",
    "authority_form_not_connect": b"OPTIONS h:80 HTTP/1.1\r\nHost: h\r\n\r\n",
    "connect_origin_form": b"CONNECT /x HTTP/1.1\r\nHost: h\r\n\r\n",
    "connect_asterisk": b"CONNECT * HTTP/1.1\r\nHost: h\r\n\r\n",
    "connect_no_port": b"CONNECT db HTTP/1.1\r\nHost: db\r\n\r\n",
    "connect_empty_port": b"CONNECT db: HTTP/1.1\r\nHost: db\r\n\r\n",
    "connect_no_host": b"CONNECT :5432 HTTP/1.1\r\nHost: db\r\n\r\n",
    "connect_userinfo": b"CONNECT u@db:5432 HTTP/1.1\r\nHost: db\r\n\r\n",
    "connect_absolute": b"CONNECT http://db:5432/ HTTP/1.1\r\nHost: db\r\n\r\n",
    "method_unknown_token": b"FROB / HTTP/1.1\r\nHost: h\r\n\r\n",
    "method_lowercase": b"get / HTTP/1.1\r\nHost: h\r\n\r\n",
    "target_space": b"GET /a b HTTP/1.1\r\nHost: h\r\n\r\n",
    "target_tab": b"GET /a\tb HTTP/1.1\r\nHost: h\r\n\r\n",
    "bad_method": b"G@T / HTTP/1.1\r\nHost: h\r\n\r\n",
    "version_12": b"GET / HTTP/1.2\r\nHost: h\r\n\r\n",
    "version_20": b"GET / HTTP/2.0\r\nHost: h\r\n\r\n",
    "version_junk": b"GET / HTTX/1.1\r\nHost: h\r\n\r\n",
    "relative_target": b"GET foo HTTP/1.1\r\nHost: h\r\n\r\n",
    "chunk_ext_bare_cr": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1;a=b\rc\r\nx\r\n0\r\n\r\n",
    "chunk_ext_bare_lf": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1;a=b\nx\r\n0\r\n\r\n",
    "chunk_size_bare_lf": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1\nx\r\n0\r\n\r\n",
    "chunk_size_space": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1 \r\nx\r\n0\r\n\r\n",
    "chunk_ext_empty": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1;\r\nx\r\n0\r\n\r\n",
    "chunk_ext_no_value": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1;a=\r\nx\r\n0\r\n\r\n",
    "chunk_ext_bad_name": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1;a b\r\nx\r\n0\r\n\r\n",
    "chunk_ext_open_quote": (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"1;a=\"b\r\nx\r\n0\r\n\r\n"),
    "chunk_size_leading_space": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n 1\r\nx\r\n0\r\n\r\n",
    "chunk_size_0x": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0x1\r\nx\r\n0\r\n\r\n",
    "chunk_size_underscore": (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                              b"1_0\r\n" + b"x" * 16 + b"\r\n0\r\n\r\n"),
    "chunk_size_plus": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n+1\r\nx\r\n0\r\n\r\n",
    "chunk_missing_lf_after_data": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\rx0\r\n\r\n",
    "chunk_data_short": (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"1\r\nx\r\n2\r\nx\r\n1\r\ny\r\n0\r\n\r\n"),
    "chunk_size_nonhex": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nz\r\n",
    "chunk_size_63bits": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n8000000000000000\r\n",
    "chunk_size_17_digits": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n00000000000000001\r\n",
    "chunk_data_no_crlf": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nxy\r\n0\r\n\r\n",
    "trailer_obs_fold": (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: 1\r\n 2\r\n\r\n"),
    "trailer_bare_lf": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: 1\n\n",
}


@pytest.mark.parametrize("name", sorted(BAD_REQUESTS))
def test_badRequest(name):
    """Each smuggling vector gets a 400; whatever came before it on the connection is still delivered."""
    raw = BAD_REQUESTS[name]
    for how, pieces in splits(raw):
        evs = decode(RequestDecoder(), pieces)
        assert evs[-1] == ("error", 400), (how, evs)
        assert all(e[0] != "end" for e in evs), (how, evs)


def test_errorAfterPipelinedRequest():
    """A bad request behind a good one: the good one's events come first, then the error; then nothing."""
    d = RequestDecoder()
    evs = d.feed(b"GET / HTTP/1.1\r\nHost: h\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\nHost: h\r\n\r\n")
    assert [norm(e) for e in evs] == [req(), END, ("error", 400)]
    assert d.feed(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n") == []


def test_errorRaisedWhenNothingElse():
    with pytest.raises(HTTPCodecError) as e:
        RequestDecoder().feed(BAD_REQUESTS["cl_and_te"])
    assert e.value.status == 400


def test_manyTinyChunksComeAsOneBodyDataPerFeed():
    """A run of complete chunks is decoded in one pass and delivered together; splits give the same bytes."""
    head = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    raw = head + b"1\r\nx\r\n" * 1000 + b"0\r\n\r\n"
    evs = RequestDecoder().feed(raw)
    assert [norm(e) for e in evs] == [req(b"POST", chunked=True), ("body", b"x" * 1000), END]
    body = b"".join(b"%x%s\r\n%s\r\n" % (n, ext, b"y" * n)
                    for n, ext in zip(range(1, 60), [b"", b";a=b", b" ;q=\"v\"", b""] * 15))
    body += b"00A\r\n0123456789\r\nF\r\n" + b"z" * 15 + b"\r\n" + b"400\r\n" + b"w" * 1024 + b"\r\n"
    expected = b"".join(b"y" * n for n in range(1, 60)) + b"0123456789" + b"z" * 15 + b"w" * 1024
    checkRequests(head + body + b"0\r\nX-T: 1\r\n\r\n" + head + b"1\r\n!\r\n0\r\n\r\n",
                  [req(b"POST", chunked=True), ("body", expected), ("end", [(b"x-t", b"1")]),
                   req(b"POST", chunked=True), ("body", b"!"), END])


def test_bodyLimitInsideARunOfChunks():
    """The chunks within the limit are delivered, then 413, however the bytes are cut."""
    raw = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1\r\nx\r\n" * 10 + b"0\r\n\r\n"
    for how, pieces in splits(raw):
        d = RequestDecoder()
        d.bodyLimit = 5
        assert decode(d, pieces) == [req(b"POST", chunked=True), ("body", b"xxxxx"), ("error", 413)], how


def test_badChunkAfterARunOfGoodOnes():
    """The good chunks before a bad one are delivered, then the 400."""
    raw = (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1\r\nx\r\n" * 3
           + b"2\r\nxyz\r\n")
    checkRequests(raw, [req(b"POST", chunked=True), ("body", b"xxxxy"), ("error", 400)])


def test_chunkSizeRefusedAtOnce():
    """More than 16 hex digits is refused before the line ends."""
    d = RequestDecoder()
    d.feed(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0000000000000000")
    with pytest.raises(HTTPCodecError) as e:
        d.feed(b"0")
    assert e.value.status == 400


def test_chunkExtensionTooLong():
    d = RequestDecoder()
    d.feed(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1;x=")
    with pytest.raises(HTTPCodecError) as e:
        d.feed(b"a" * 5000)
    assert e.value.status == 400


def test_requestLineLimit():
    """414 as soon as the line is longer than the limit, without waiting for its end; the limit itself passes."""
    d = RequestDecoder(maxRequestLine=64)
    with pytest.raises(HTTPCodecError) as e:
        d.feed(b"GET /" + b"a" * 100)
    assert e.value.status == 414
    line = b"GET /" + b"a" * (64 - 14) + b" HTTP/1.1"
    assert len(line) == 64
    checkRequests(line + b"\r\nHost: h\r\n\r\n", [req(path=line[4:-9]), END], maxRequestLine=64)
    checkRequests(b"GET /a" + line[4:] + b"\r\nHost: h\r\n\r\n", [("error", 414)], maxRequestLine=64)


def test_headerBytesLimit():
    """431 once the header block passes the limit, before it ends."""
    d = RequestDecoder(maxHeaderBytes=100)
    d.feed(b"GET / HTTP/1.1\r\nHost: h\r\n")
    with pytest.raises(HTTPCodecError) as e:
        d.feed(b"X-Big: " + b"a" * 100)
    assert e.value.status == 431
    block = b"Host: h\r\nX: " + b"a" * (100 - 16) + b"\r\n\r\n"
    assert len(block) == 100
    checkRequests(b"GET / HTTP/1.1\r\n" + block, [req(headers=[(b"x", b"a" * 84)]), END], maxHeaderBytes=100)
    checkRequests(b"GET / HTTP/1.1\r\nX: a" + block, [("error", 431)], maxHeaderBytes=100)


def test_headerCountLimit():
    d = RequestDecoder(maxHeaders=3)
    with pytest.raises(HTTPCodecError) as e:
        d.feed(b"GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\nC: 3\r\n")
    assert e.value.status == 431
    raw = b"GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\n\r\n"
    checkRequests(raw, [req(headers=[(b"a", b"1"), (b"b", b"2")]), END], maxHeaders=3)


def test_trailerLimits():
    d = RequestDecoder(maxHeaderBytes=50)
    d.feed(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n")
    with pytest.raises(HTTPCodecError) as e:
        d.feed(b"X-T: " + b"a" * 60)
    assert e.value.status == 431


def test_bodyLimit():
    """Body bytes past bodyLimit give 413 at once, for Content-Length and chunked bodies alike."""
    d = RequestDecoder()
    d.bodyLimit = 4
    evs = decode(d, [b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nabcd"])
    assert evs == [req(b"POST", length=4), ("body", b"abcd"), END]
    evs = decode(d, [b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc", b"de"])
    assert evs == [req(b"POST", length=10), ("body", b"abc"), ("error", 413)]
    d = RequestDecoder()
    d.bodyLimit = 4
    evs = decode(d, [b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n", b"2\r\nde"])
    assert evs == [req(b"POST", chunked=True), ("body", b"abc"), ("error", 413)]


# -- responses -----------------------------------------------------------------------------------------------------

def test_responseContentLength():
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\nServer: x\r\n\r\nhello"
    checkResponses([b"GET"], raw, [resp(headers=[(b"server", b"x")], length=5), ("body", b"hello"), END])


def test_headResponseHasNoBody():
    raw = (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
           b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    checkResponses([b"HEAD", b"HEAD", b"GET"], raw,
                   [resp(length=5), END, resp(), END, resp(length=2), ("body", b"ok"), END])


def test_noBodyStatuses():
    raw = b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n"
    checkResponses([b"GET", b"GET"], raw, [resp(204, b"No Content"), END, resp(304, b"Not Modified", length=9), END])


def test_interimResponses():
    """1xx responses are InterimResponse events and leave the expectation for the final response."""
    raw = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"
           b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    checkResponses([b"POST"], raw, [("interim", 100, []), ("interim", 103, [(b"link", b"</s.css>")]),
                                    resp(201, b"Created", length=0), END])


def test_readUntilClose():
    raw = b"HTTP/1.0 200 OK\r\nServer: old\r\n\r\nall of it"
    checkResponses([b"GET"], raw, [resp(headers=[(b"server", b"old")], version=(1, 0), keepAlive=False),
                                   ("body", b"all of it"), END], eof=True)


def test_http10ResponseKeepAlive():
    raw = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nx"
    checkResponses([b"GET"], raw, [resp(version=(1, 0), length=1), ("body", b"x"), END])
    raw = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx"
    checkResponses([b"GET"], raw, [resp(length=1, keepAlive=False), ("body", b"x"), END])


def test_responseChunkedTrailers():
    raw = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: grpc-status\r\n\r\n"
           b"3\r\nabc\r\n0\r\ngrpc-status: 0\r\nTransfer-Encoding: x\r\n\r\n")
    checkResponses([b"POST"], raw, [resp(chunked=True), ("body", b"abc"), ("end", [(b"grpc-status", b"0")])])


def test_switchingProtocols():
    """After a 101 to a request that offered an upgrade, the bytes are the tunnel's."""
    raw = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\x81\x00"
    for how, pieces in splits(raw):
        d = ResponseDecoder()
        d.expect(b"GET", upgrade=True)
        assert decode(d, pieces) == [resp(101, b"Switching Protocols", keepAlive=False), END, ("tunnel", b"\x81\x00")]
    d = ResponseDecoder()
    d.expect(b"GET", upgrade=True)
    assert d.feed(raw)[0].upgrade == b"websocket"


def test_unsolicitedSwitchingProtocolsIsBadFraming():
    """A 101 to a request that offered no upgrade (the client never offers one yet) is refused: 502."""
    raw = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\x81\x00"
    checkResponses([b"GET"], raw, [("error", 502)])


@pytest.mark.parametrize("raw", [
    b"",
    b"HTTP/1.1 200 OK\r\nContent-Le",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
])
def test_eof(raw):
    """eof() between responses is quiet; inside a head or a framed body it is a 502."""
    d = ResponseDecoder()
    d.expect(b"GET")
    d.feed(raw)
    if raw:
        with pytest.raises(HTTPCodecError) as e:
            d.eof()
        assert e.value.status == 502
    else:
        assert d.eof() == []


BAD_RESPONSES = {
    "cl_and_te": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "cl_duplicate": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    "cl_signed": b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    "te_gzip": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
    "te_two_tokens": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked chunked\r\n\r\n0\r\n\r\n",
    "status_short": b"HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n",
    "version": b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
    "obs_fold": b"HTTP/1.1 200 OK\r\nX: 1\r\n 2\r\nContent-Length: 0\r\n\r\n",
    "bare_lf": b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
    "bad_chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfoo\r\n",
    "garbage": b"SSH-2.0-OpenSSH\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(BAD_RESPONSES))
def test_badResponse(name):
    for how, pieces in splits(BAD_RESPONSES[name]):
        d = ResponseDecoder()
        d.expect(b"GET")
        evs = decode(d, pieces)
        assert evs[-1] == ("error", 502), (how, evs)
        assert all(e[0] != "end" for e in evs), (how, evs)


def test_unsolicitedResponse():
    checkResponses([], b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", [("error", 502)])


# -- serialisation -------------------------------------------------------------------------------------------------

def test_hopByHop():
    assert HOP_BY_HOP == {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te",
                          b"trailer", b"upgrade"}


def test_encodeRequestHead():
    headers = HeaderMap([(b"accept", b"*/*"), (b"connection", b"close"), (b"content-length", b"99"),
                         (b"te", b"trailers"), (b"host", b"evil")])
    head = RequestHead(b"POST", b"/p?q", b"svc:80", headers, contentLength=3)
    assert encodeRequestHead(head, False) == (b"POST /p?q HTTP/1.1\r\nhost: svc:80\r\naccept: */*\r\n"
                                              b"te: trailers\r\ncontent-length: 3\r\n\r\n")
    assert encodeRequestHead(RequestHead(b"GET", b"", b"h"), True) == (
        b"GET / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n")


def test_encodeResponseHead():
    head = ResponseHead(404, HeaderMap([(b"server", b"txmesh"), (b"transfer-encoding", b"gzip")]), contentLength=0)
    assert encodeResponseHead(head, False, True) == (b"HTTP/1.1 404 Not Found\r\nserver: txmesh\r\n"
                                                     b"content-length: 0\r\n\r\n")
    assert encodeResponseHead(ResponseHead(200, reason=b"Fine"), True, False) == (
        b"HTTP/1.1 200 Fine\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n")
    assert encodeResponseHead(ResponseHead(204, contentLength=0), True, True, (1, 0)) == (
        b"HTTP/1.1 204 No Content\r\nconnection: keep-alive\r\n\r\n")
    assert encodeResponseHead(ResponseHead(799), False, True) == b"HTTP/1.1 799 Unknown\r\n\r\n"


@pytest.mark.parametrize("field", [(b"x", b"a\r\nset-cookie: 1"), (b"x\r\ny", b"1"), (b"x", b"a\nb")])
def test_encodeRefusesSplitting(field):
    with pytest.raises(HTTPCodecError) as e:
        encodeResponseHead(ResponseHead(200, HeaderMap([field])), False, True)
    assert e.value.status == 500
    with pytest.raises(HTTPCodecError):
        encodeRequestHead(RequestHead(b"GET", b"/", b"h", HeaderMap([field])), False)


def test_encodeChunks():
    assert encodeChunk(b"") == b""
    assert encodeChunk(b"x" * 26) == b"1a\r\n" + b"x" * 26 + b"\r\n"
    assert LAST_CHUNK == b"0\r\n\r\n"
    assert encodeTrailers(None) == LAST_CHUNK
    assert encodeTrailers(HeaderMap([(b"grpc-status", b"0"), (b"content-length", b"1")])) == (
        b"0\r\ngrpc-status: 0\r\n\r\n")


def test_roundTrip():
    """What we encode, we decode to the same head and body."""
    head = RequestHead(b"PUT", b"/k", b"store", HeaderMap([(b"x-a", b"1")]))
    raw = (encodeRequestHead(head, True) + encodeChunk(b"abc") + encodeChunk(b"de")
           + encodeTrailers(HeaderMap([(b"x-sum", b"5")])))
    checkRequests(raw, [req(b"PUT", b"/k", b"store", [(b"x-a", b"1")], chunked=True), ("body", b"abcde"),
                        ("end", [(b"x-sum", b"5")])])
    rh = ResponseHead(200, HeaderMap([(b"x-b", b"2")]), contentLength=2)
    checkResponses([b"PUT"], encodeResponseHead(rh, False, True) + b"ok",
                   [resp(headers=[(b"x-b", b"2")], length=2), ("body", b"ok"), END])


@pytest.mark.parametrize("line", [b"GET / RTSP/1.0", b"GET / ICE/1.0", b"GET / RTSP/1.1"])
def test_other_protocols_on_an_http_request_line_are_refused(line):
    """llhttp parses RTSP and ICE request lines too (as HTTP/1.0): they are not HTTP."""
    with pytest.raises(HTTPCodecError) as e:
        RequestDecoder().feed(line + b"\r\nHost: a\r\n\r\n")
    assert e.value.status == 400


def test_http_request_line_split_byte_by_byte_is_still_read():
    d = RequestDecoder()
    events = []
    for b in b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n":
        events += d.feed(bytes([b]))
    assert events[0].head.path == b"/x"


def test_rtsp_status_line_from_upstream_is_bad_framing():
    d = ResponseDecoder()
    d.expect(b"GET")
    with pytest.raises(HTTPCodecError) as e:
        d.feed(b"RTSP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert e.value.status == 502
    d = ResponseDecoder()
    d.expect(b"GET")
    events = []
    for b in b"HTTP/1.1 204 No Content\r\n\r\n":
        events += d.feed(bytes([b]))
    assert events[0].head.status == 204
