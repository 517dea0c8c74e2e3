"""
txmesh.testing itself: the "Testing your filter" example of docs/filters.md runs as written, and the harness
behaves as a reactor would (closes on the next turn, upstream answers after the request).
"""

import pathlib
import re
import shutil

from txmesh.testing import InMemoryMesh, parseResponses

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLE_PLUGINS = ROOT / "tests" / "fixtures" / "example_filter" / "txmesh" / "plugins"

MESH = """
listeners:
- name: l
  protocol: http
  address: tcp:0
  route_config:
    virtual_hosts: [{name: all, domains: ["*"], routes: [{match: {prefix: /}, route: {cluster: backend}}]}]
clusters: [{name: backend, endpoints: [{address: "10.0.0.1:80"}]}]
"""


def test_the_docs_harness_example_runs(tmp_path):
    doc = (ROOT / "docs" / "filters.md").read_text()
    [block] = [b for b in re.findall(r"```python\n(.*?)```", doc, re.S) if "InMemoryMesh(" in b]
    plugins = tmp_path / "plugins"
    shutil.copytree(EXAMPLE_PLUGINS, plugins)  # a copy: Twisted writes its dropin.cache beside the plugins
    assert "plugin_paths: [plugins]" in block
    code = block.replace("plugin_paths: [plugins]", "plugin_paths: [%s]" % (plugins,))
    namespace = {}
    exec(compile(code, "docs/filters.md", "exec"), namespace)
    tests = [f for name, f in namespace.items() if name.startswith("test_")]
    assert len(tests) == 2
    for test in tests:
        test()


def test_a_close_reaches_the_protocol_on_the_next_turn():
    mesh = InMemoryMesh(MESH)
    client = mesh.connect()
    client.transport.loseConnection()
    assert not client.transport.lost and mesh.value("downstream_cx_active") == 1
    mesh.runTurns()
    assert client.transport.lost and mesh.value("downstream_cx_active") == 0


def test_the_upstream_reads_a_request_on_the_next_turn_and_answers_automatically_after_a_delay():
    mesh = InMemoryMesh(MESH)
    backend = mesh.upstream("backend")
    backend.respondWith(200, body=b"auto", after=1.0)
    client = mesh.connect()
    client.protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")  # bypassing the harness: no turn yet
    assert backend.requests == []
    mesh.runTurns()
    assert len(backend.requests) == 1 and backend.unanswered == []
    mesh.advance(0.9)
    assert client.received() == b""
    mesh.advance(0.2)
    assert client.response().body == b"auto"


def test_held_and_refused_connects():
    mesh = InMemoryMesh(MESH)
    backend = mesh.upstream("backend")
    backend.holdConnections()
    client = mesh.connect()
    client.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert backend.connections == [] and len(backend.heldConnects) == 1
    backend.acceptHeldConnect()
    backend.requests[0].respond(204)
    assert client.response().status == 204


def test_parse_responses_skips_interim_and_marks_a_cut_body():
    data = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    first, second = parseResponses(data, closed=True)
    assert (first.status, first.body, first.complete) == (200, b"ok", True)
    assert (second.body, second.complete) == (b"abc", False)
