"""
The Twisted plugin package of txmesh: filter factories and load-balancer factories are found here with
``twisted.plugin.getPlugins(IFilterFactory, txmesh.plugins)``.

As with ``twisted.plugins``, every ``txmesh/plugins/`` directory on ``sys.path`` contributes, so a third-party
distribution adds a filter by shipping a module in its own ``txmesh/plugins/`` folder (without ``__init__.py``),
or the user points ``plugin_paths`` in mesh.yaml at a folder of plugin modules.
"""

from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))
__all__ = []
