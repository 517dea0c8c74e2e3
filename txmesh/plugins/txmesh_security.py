"""The built-in authorization filter (issue 14 part 5), found by getPlugins: the ``rbac`` stream filter."""

from txmesh.filters.rbac import RbacFactory

rbac = RbacFactory()
