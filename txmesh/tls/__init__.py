"""
TLS for listeners and clusters (issue 14), on pyOpenSSL through Twisted's TLS transport, with peer identities checked
by service_identity.

- L{txmesh.tls.material}: PEM files (certificate chains, private keys, CA bundles) loaded into pyOpenSSL objects with
  errors that name the file, and L{PeerIdentity}: what a peer certificate says about who the peer is (SPIFFE URI
  SAN, DNS SANs, subject), the value filters, routes, access logs and the authorization filter read.
"""
