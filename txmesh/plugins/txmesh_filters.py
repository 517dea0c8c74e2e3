"""The built-in terminal filter, as a plugin."""

from txmesh.filters.router import RouterFactory

router = RouterFactory()
