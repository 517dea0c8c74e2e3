"""``txmesh check mesh.yaml``: validate a configuration without starting anything."""

import argparse
import sys

from txmesh import config as _config
from txmesh.errors import ConfigError


def main(argv=None):
    parser = argparse.ArgumentParser(prog="txmesh", description="txmesh sidecar tools")
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
