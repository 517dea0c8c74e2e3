"""
``x-forwarded-client-cert`` toward the upstream (Envoy's ``forward_client_cert_details``), applied by the HTTP and
gRPC listeners to each request head (L{txmesh.protocols.listener.ListenerProtocol.prepareRequest}).

An element is ``By=<this hop's URI SAN>;Hash=<sha256 of the client certificate>`` plus the fields
``set_current_client_cert_details`` asks for: ``Cert="<url-encoded PEM>"``, ``Subject="<RFC 4514 DN>"``,
``URI=<each URI SAN>``, ``DNS=<each DNS SAN>`` (Envoy's format).  Elements of successive hops are joined by ``,``.
Only a mutual-TLS connection (a verified client certificate) may pass a header on; from any other peer the header
is removed, whatever arrived (except with ``always_forward_only``).
"""

from urllib.parse import quote

XFCC = b"x-forwarded-client-cert"


def _quoted(value):
    return '"%s"' % (value.replace("\\", "\\\\").replace('"', '\\"'),)


def xfccElement(tls, details):
    """This hop's element (bytes) for a connection's IDownstreamTLS ``tls`` whose client sent a certificate."""
    peer = tls.peer
    parts = []
    if tls.localUriSan:
        parts.append("By=" + tls.localUriSan)
    parts.append("Hash=" + peer.fingerprint)
    if "cert" in details and tls.peerCertificatePem is not None:
        parts.append("Cert=" + _quoted(quote(tls.peerCertificatePem.decode("ascii"), safe="")))
    if "chain" in details and tls.peerCertificatePem is not None:
        # the verified chain is not kept per connection: the leaf stands for it (said in docs/security.md)
        parts.append("Chain=" + _quoted(quote(tls.peerCertificatePem.decode("ascii"), safe="")))
    if "subject" in details:
        parts.append("Subject=" + _quoted(peer.subject))
    if "uri" in details:
        parts += ["URI=" + u for u in peer.uriSans]
    if "dns" in details:
        parts += ["DNS=" + d for d in peer.dnsSans]
    return ";".join(parts).encode("utf-8", "replace")


def applyForwardClientCert(headers, fcc, tls, element):
    """
    Apply ``fcc`` (a ForwardClientCert) to a request's HeaderMap ``headers``.

    @param tls: the connection's IDownstreamTLS, or None (plain text).
    @param element: ``element()`` -> this hop's element (bytes), called only when one is set (cached by the caller).
    """
    mode = fcc.mode
    if mode == "always_forward_only":
        return
    mtls = tls is not None and tls.peer is not None
    if mode == "sanitize" or not mtls:
        if XFCC in headers:
            headers.remove(XFCC)
        return
    if mode == "forward_only":
        return
    if mode == "sanitize_set":
        headers.set(XFCC, element())
        return
    # append_forward
    previous = b",".join(headers.getAll(XFCC))
    headers.set(XFCC, element() if not previous else previous + b"," + element())
