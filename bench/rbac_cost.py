"""
What the ``rbac`` filter costs per request (issue 14 part 5), in process: ``Rules.evaluate`` and the filter's
``decodeHeaders`` for the four-policy HTTP config of tests/test_rbac.py (path, method, address and header
matchers), a request the default action allows (every policy tried) and one the second policy denies.

    python bench/rbac_cost.py
"""

import os
import sys
import timeit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import yaml  # noqa: E402

from tests.test_rbac import HTTP_POLICY, context, info, request  # noqa: E402
from txmesh.filters.rbac import RbacFactory  # noqa: E402
from txmesh.testing import FakeDecoderCallbacks, FakeRuntime, RecordingInstaller  # noqa: E402

N = 200000


def perCall(f):
    return min(timeit.repeat(f, number=N, repeat=5)) / N * 1e6


def main():
    config = RbacFactory().buildConfig(yaml.safe_load(HTTP_POLICY), context())
    rules = config.rules.enforced
    allowed = request(b"/api/x?q=1", headers=[(b"x-role", b"dev"), (b"user-agent", b"curl")])
    denied = request(b"/admin/x")
    streamInfo = info()
    print("Rules.evaluate, allowed by the default (4 policies tried): %.2f us" % perCall(
        lambda: rules.evaluate(allowed, streamInfo)))
    print("Rules.evaluate, denied by the second policy: %.2f us" % perCall(
        lambda: rules.evaluate(denied, streamInfo)))
    installer, runtime = RecordingInstaller(), FakeRuntime()
    RbacFactory().createFilters(config, installer, runtime)
    [f] = installer.decoders
    f.setDecoderFilterCallbacks(FakeDecoderCallbacks(streamInfo, allowed, runtime.clock))
    print("RbacFilter.decodeHeaders, allowed (counted): %.2f us" % perCall(lambda: f.decodeHeaders(allowed, True)))


if __name__ == "__main__":
    main()
