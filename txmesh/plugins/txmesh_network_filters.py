"""The built-in network (connection-level) filters: connection_limit and source_ip (found by getPlugins)."""

from txmesh.filters.connection_limit import ConnectionLimitFactory
from txmesh.filters.source_ip import SourceIPFactory

connectionLimit = ConnectionLimitFactory()
sourceIP = SourceIPFactory()
