"""txmesh: a multi-protocol service-mesh sidecar on Twisted."""

# the one place the version is written: setup.cfg reads it (``version = attr: txmesh.__version__``)
__version__ = "0.1.0"

# the compiled cores, where built and not turned off by TXMESH_NO_EXTENSIONS=1 (txmesh/speedups.py): installed before
# any other txmesh module is imported
from txmesh import speedups as _speedups  # noqa: E402

_speedups.install()
