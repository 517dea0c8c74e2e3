# Puts the repository root on sys.path so the tests import the working tree's txmesh.

# the real registry servers (ZooKeeper, etcd) as fixtures: tests/registry_servers.py
pytest_plugins = ["tests.registry_servers"]
