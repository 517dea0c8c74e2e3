"""
``txmesh check mesh.yaml``: validate a configuration without starting anything; ``txmesh --version``: the versions
of txmesh, Python and Twisted, and the reactor ``twistd txmesh`` runs on by default.
"""

import argparse
import sys

from txmesh import config as _config
from txmesh.errors import ConfigError
from txmesh.logs import versions
from txmesh.speedups import describe as describeSpeedups

# what ``twistd txmesh`` installs unless ``-r`` names another reactor (txmesh.tap.installDefaultReactor)
DEFAULT_REACTOR = "txmesh-epoll (txmesh.reactor.TxmeshReactor)"


def versionText():
    """
    ``txmesh 0.1.0`` then one ``name version`` line each for Python, Twisted and the default reactor, and the hot
    path's mode (txmesh/speedups.py) with its compiled modules, or why they run as Python.
    """
    found = versions(DEFAULT_REACTOR)
    speedups = describeSpeedups()
    lines = ["%s %s" % found[0]] + ["%s %s" % pair for pair in found[1:]] + ["hot path %s" % (speedups["mode"],)]
    if speedups["compiled"]:
        lines.append("compiled %s" % (" ".join(speedups["compiled"]),))
    for reason in sorted(set(speedups["pure"].values())):
        names = [name for name, why in speedups["pure"].items() if why == reason]
        lines.append("pure (%s) %s" % (reason, " ".join(names)))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="txmesh", description="txmesh sidecar tools",
                                     formatter_class=argparse.RawTextHelpFormatter)  # keeps --version's lines
    parser.add_argument("--version", action="version", version=versionText())
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate a mesh.yaml and exit 0 (valid) or 1 (invalid)")
    check.add_argument("path")
    args = parser.parse_args(argv)
    if args.command == "check":
        try:
            _config.load(args.path)
        except ConfigError as e:
            print("txmesh: invalid configuration: %s" % (e,), file=sys.stderr)
            return 1
        print("txmesh: %s is valid" % (args.path,))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
