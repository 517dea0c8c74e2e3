"""
xDS under ``workers: N`` (issue 13 part 6, txmesh/workers_xds.py): the parent is the one xDS client; what it accepts
reaches every worker as one version through the reload's all-or-none path, or is NACKed and put back; an update waits
for a restarting worker instead of being refused; a file reload keeps the control plane's resources; a worker runs
no xDS client of its own.  The parent runs on a memory reactor with the fake launcher and ports of
tests/test_workers.py, its xDS resource state driven directly (as the ADS transport drives it).
"""

import json

import pytest
from zope.interface.verify import verifyObject

from tests.test_workers import FakeHot, FakeLauncher, answerApply, say, sent
from tests.xds_resources import assignment, cluster, listener, routeConfig
from txmesh.interfaces import IConfigApplier
from txmesh.xds.translate import CLUSTER, ENDPOINT, LISTENER, ROUTE

BOOTSTRAP = """
workers: 2
node: {id: sidecar-1, cluster: web}
admin:
  address: tcp:9901:interface=127.0.0.1
listeners:
  - name: static
    protocol: http
    address: tcp:15001:interface=127.0.0.1
    route_config:
      virtual_hosts: [{name: a, domains: ["*"], routes: [{match: {prefix: /}, direct_response: {status: %d}}]}]
clusters:
  - name: xds
    protocol: grpc
    endpoints: [{address: "127.0.0.1:18000"}]
dynamic_resources:
  cluster: xds
"""


@pytest.fixture
def parent(tmp_path):
    from twisted.internet.testing import MemoryReactorClock

    from txmesh.workers_parent import WorkersParent, readConfig

    path = tmp_path / "mesh.yaml"
    path.write_text(BOOTSTRAP % (200,))
    text, cfg = readConfig(str(path))
    launcher, hot = FakeLauncher(), FakeHot()
    p = WorkersParent(cfg, text, MemoryReactorClock(), launcher, hotRestart=hot, installSignal=lambda *a: None,
                      runtimeDir=str(tmp_path), gatherInterval=0)
    p.privilegedStartService()
    p.startService()
    for entry in launcher.launched:
        say(entry[3], {"type": "serving"})
    p.path, p.launcher, p.hot = path, launcher, hot
    yield p
    p.xds.client.stop()


def update(parent, typeUrl, version, resources):
    """Hand ``resources`` to the parent's xDS state; @return: the list its ACK (None) or NACK (a reason) lands in."""
    answer = []
    parent.xds.state.update(typeUrl, version, resources).addCallback(answer.append)
    return answer


def applied(parent, outcomes=("applied", "applied")):
    """Answer the workers' last ``apply`` requests; @return: the requests, their configuration texts parsed."""
    requests = answerApply(parent.launcher, list(outcomes))
    for r in requests:
        r["parsed"] = json.loads(r["config"])
    return requests


def test_the_parent_runs_the_one_xds_client_and_its_applier_is_every_worker(parent):
    assert parent.xds is not None and parent.xds.started
    verifyObject(IConfigApplier, parent.xds.applier)
    assert parent.xds.applier.version is parent.version
    # the stream goes to the control plane's cluster, which is the only cluster the parent runs
    assert [c.name for c in parent.xds.clusters] == ["xds"]
    assert parent.reactor.tcpClients and parent.reactor.tcpClients[0][:2] == ("127.0.0.1", 18000)


def test_an_update_reaches_every_worker_as_one_version_with_its_origins(parent):
    ack = update(parent, CLUSTER, "c1", [cluster("app")])
    # an EDS cluster warms: ACKed with nothing to apply until its assignment comes
    assert ack == [None] and not [m for m in sent(parent.launcher.launched[0][5]) if m["type"] == "apply"]
    ack2 = update(parent, ENDPOINT, "e1", [assignment("app", "127.0.0.1:18081")])
    assert ack2 == []  # until every worker answered
    requests = applied(parent)
    assert ack2 == [None]
    assert [r["version"] for r in requests] == [2, 2]
    assert {r["source"] for r in requests} == {"xds"} and "ADS 127.0.0.1:18000" in requests[0]["location"]
    assert [c["name"] for c in requests[0]["parsed"]["clusters"]] == ["xds", "app"]
    assert requests[0]["origins"]["clusters"]["app"]["version_info"] == "c1"
    assert parent.version.version == 2 and parent.version.source == "xds"
    assert parent.configDump()["version_info"]["clusters"]["app"]["source"] == "xds"
    assert parent.control.serverInfo()["xds"]["resources"]["cluster"]["version_info"] == "c1"
    # a worker started now (a restart) gets the merged configuration, the version and the origins
    message, _ = parent.startMessage(1)
    assert message["worker"]["version"] == 2 and json.loads(message["worker"]["config"])["clusters"][1]["name"] == "app"
    assert message["worker"]["origins"]["clusters"]["app"]["resource"] == "app"


def test_a_listener_from_lds_is_bound_by_the_parent_and_handed_to_every_worker(parent):
    update(parent, CLUSTER, "c1", [cluster("app")])
    update(parent, ENDPOINT, "e1", [assignment("app", "127.0.0.1:18081")])
    applied(parent)
    ack = update(parent, LISTENER, "l1", [listener("web", 15002, rds="routes")])
    ack2 = update(parent, ROUTE, "r1", [routeConfig("routes", "app")])
    assert parent.launcher.launched[0][5].fds == [42]  # the new listener's socket goes with the request
    requests = applied(parent)
    assert ack == [None] and ack2 == [None] and requests[0]["sockets"] == ["listener:web"]
    assert parent.ports["listener:web"].port == 15002 and parent.hot.ports["listener:web"].paused
    assert parent.version.version == 3


def test_an_update_one_worker_refuses_is_nacked_and_put_back_everywhere(parent):
    running = parent.text
    update(parent, CLUSTER, "c1", [cluster("app")])
    nack = update(parent, ENDPOINT, "e1", [assignment("app", "127.0.0.1:18081")])
    applied(parent, ("applied", "rejected"))
    (back,) = answerApply(parent.launcher, ["applied"])[:1]
    assert back["config"] == running and back["version"] == 1 and back["source"] == "file"
    assert len(nack) == 1 and "worker 1: bad" in nack[0]
    assert parent.version.version == 1 and parent.text == running
    assert ENDPOINT not in parent.xds.state.versions  # the last accepted assignments (none) keep serving


def test_an_update_waits_for_a_restarting_worker_then_applies(parent):
    worker = parent.supervisor.workers[1]
    worker.state = "starting"  # as between a restart's spawn and its "serving"
    update(parent, CLUSTER, "c1", [cluster("app")])
    ack = update(parent, ENDPOINT, "e1", [assignment("app", "127.0.0.1:18081")])
    assert ack == [] and not [m for m in sent(parent.launcher.launched[0][5]) if m["type"] == "apply"]
    say(parent.launcher.launched[1][3], {"type": "serving"})
    applied(parent)
    assert ack == [None] and parent.version.version == 2


def test_an_update_is_nacked_when_a_worker_never_serves(parent):
    from txmesh.workers_parent import XDS_WAIT_FOR_WORKERS

    parent.supervisor.workers[1].state = "starting"
    update(parent, CLUSTER, "c1", [cluster("app")])
    nack = update(parent, ENDPOINT, "e1", [assignment("app", "127.0.0.1:18081")])
    parent.reactor.advance(XDS_WAIT_FOR_WORKERS)
    assert len(nack) == 1 and "not serving yet" in nack[0]


def test_a_file_reload_keeps_the_control_planes_resources(parent):
    update(parent, CLUSTER, "c1", [cluster("app")])
    update(parent, ENDPOINT, "e1", [assignment("app", "127.0.0.1:18081")])
    applied(parent)
    parent.path.write_text(BOOTSTRAP % (404,))
    result = []
    parent.reload("SIGHUP").addCallback(result.append)
    requests = applied(parent)
    assert [c["name"] for c in requests[0]["parsed"]["clusters"]] == ["xds", "app"]
    assert requests[0]["source"] == "file"
    assert result[0]["outcome"] == "applied" and parent.version.version == 3
    assert parent.version.source == "file" and parent.configDump()["version_info"]["clusters"]["app"]["source"] == "xds"


def test_a_change_to_the_control_planes_cluster_by_reload_reaches_the_parents_cluster(parent):
    cp = parent.xds.clusters.get("xds")
    parent.path.write_text((BOOTSTRAP % (200,)).replace("127.0.0.1:18000", "127.0.0.1:18001"))
    parent.reload("SIGHUP")
    applied(parent)
    assert parent.xds.clusters.get("xds") is cp and [h.port for h in cp.hosts] == [18001]


def test_a_worker_loads_the_parents_xds_text_with_its_origins_and_runs_no_client(parent, tmp_path):
    from txmesh.service import MeshService
    from txmesh.worker import ParentConfig

    update(parent, CLUSTER, "c1", [cluster("app")])
    update(parent, ENDPOINT, "e1", [assignment("app", "127.0.0.1:18081")])
    (request, _) = applied(parent)
    source = ParentConfig(request["config"], request["filename"], name=request["source"],
                          origins=request["origins"], location=request["location"])
    config = source.read()
    assert source.name == "xds" and source.location == request["location"] and config.filename == str(parent.path)
    assert config.origins["clusters"]["app"]["version_info"] == "c1" and config.dynamicResources is not None
    from twisted.internet.testing import MemoryReactorClock

    mesh = MeshService(config, MemoryReactorClock(), installSignal=lambda *a: None, runXds=False)
    assert mesh.xds is None and mesh.clusters.get("app") is not None
