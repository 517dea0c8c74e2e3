"""Built-in stream filters other than the router: access_log, header_mutation and fault (found by getPlugins)."""

from txmesh.filters.access_log import AccessLogFactory
from txmesh.filters.fault import FaultFactory
from txmesh.filters.header_mutation import HeaderMutationFactory

accessLog = AccessLogFactory()
headerMutation = HeaderMutationFactory()
fault = FaultFactory()
