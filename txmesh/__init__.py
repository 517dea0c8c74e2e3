"""txmesh: a multi-protocol service-mesh sidecar on Twisted."""

# the one place the version is written: setup.cfg reads it (``version = attr: txmesh.__version__``)
__version__ = "0.1.0"
