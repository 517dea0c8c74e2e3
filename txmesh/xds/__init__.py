"""
The xDS client (issue 13 part 3; docs/operations.md "xDS"): Envoy's v3 discovery APIs driving a running mesh.

- ``config.py``: the bootstrap's ``dynamic_resources`` block (where the control plane is, ADS over gRPC or REST).
- ``translate.py``: Envoy's v3 resources (LDS, RDS, CDS, EDS messages from the ``xds-protos`` package) into the
  mesh.yaml shape, validated by the same builder as the file, with what txmesh cannot apply named per resource.
- ``state.py``: the resources last accepted per type, merged with the bootstrap's static parts into one MeshConfig
  and applied through the one IConfigApplier (IXdsResourceHandler).
- ``ads.py``: the aggregated discovery stream (state of the world) over txmesh's own HTTP/2 client: requests,
  ACK/NACK with version and nonce, reconnect with backoff.  ``rest.py``: the REST-JSON polling mode.
"""
