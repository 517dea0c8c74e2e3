"""The worked examples of docs/resilience.md load as they are (with the loader's own validation)."""

import os
import re

import pytest

from txmesh import config

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "resilience.md")


def examples():
    text = open(DOC, encoding="utf-8").read()
    section = text[text.index("## How the parts interact"):]
    return re.findall(r"```yaml\n(.*?)```", section, re.S)


def test_there_is_one_example_per_protocol():
    assert len(examples()) == 3


@pytest.mark.parametrize("index", range(3))
def test_each_example_loads(index):
    mesh = config.loads("admin: {address: 'tcp:0:interface=127.0.0.1'}\n" + examples()[index])
    [cluster] = mesh.clusters
    assert cluster.healthChecks and cluster.outlierDetection is not None
    assert any(route.action.retryPolicy is not None
               for vhost in mesh.listeners[0].routeConfig.virtualHosts for route in vhost.routes)
