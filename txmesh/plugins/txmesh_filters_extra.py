"""Built-in stream filters other than the router: access_log and header_mutation (found by getPlugins)."""

from txmesh.filters.access_log import AccessLogFactory
from txmesh.filters.header_mutation import HeaderMutationFactory

accessLog = AccessLogFactory()
headerMutation = HeaderMutationFactory()
