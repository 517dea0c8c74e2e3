"""
A real xDS control plane for the tests (issue 13 part 3): a grpcio server implementing Envoy's
AggregatedDiscoveryService from the ``xds-protos`` package's generated ``ads_pb2_grpc``, state of the world, and the
REST-JSON endpoints (``POST /v3/discovery:clusters`` ...) over the same snapshots, in threads of the test process.

It is a tiny snapshot cache, as go-control-plane's: the test sets, per resource type, a version and the resources
(``setSnapshot``), for every node or for one node id (a listener port per client, say); every open stream that
subscribed to the type gets the new version pushed at once (named types get the resources they named).  Resources
are built with tests/xds_resources.py.  Every request a client sends is recorded, so a test can wait for the ACK or NACK of
a version (``waitAck``, ``waitNack``) by node id.  A NACKed version is not sent again on that stream (the client
keeps its last good resources until the test sets a new version).
"""

import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2, json_format

from txmesh.xds.discovery import CDS, EDS, LDS, REST_PATHS, messages

WILDCARD = (CDS, LDS)


def resourceName(typeUrl, resource):
    return resource.cluster_name if typeUrl == EDS else resource.name


class Recorded:
    """One DiscoveryRequest a client sent: who, which type, what it says of which response."""

    def __init__(self, req, transport, answered, node=None):
        self.node = req.node.id or node
        self.metadata = json_format.MessageToDict(req.node.metadata) if req.node.HasField("metadata") else {}
        self.typeUrl = req.type_url
        self.version = req.version_info
        self.nonce = req.response_nonce
        self.names = tuple(req.resource_names)
        self.error = req.error_detail.message if req.HasField("error_detail") else None
        self.transport = transport
        self.answered = answered  # (type, version) of the response this nonce answers, or None

    def __repr__(self):
        return "<%s %s %s v=%r nonce=%r names=%r error=%r answers=%r>" % (
            self.transport, self.node, self.typeUrl.rsplit(".", 1)[-1], self.version, self.nonce, self.names,
            self.error, self.answered)


class _Stream:
    """One ADS stream: what it subscribed to and what was sent on it."""

    def __init__(self, plane):
        self.plane = plane
        self.names = {}  # type -> tuple of names (empty: wildcard)
        self.sent = {}  # type -> version sent last
        self.nacked = {}  # type -> version the client refused
        self.outbox = []
        self.wake = threading.Condition(plane.lock)
        self.closed = False
        self.node = None  # the client's node id, from its first request


class ControlPlane(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """Start with ``start()``; ``grpcPort`` and ``restPort`` are loopback ports; ``stop()`` ends both."""

    def __init__(self):
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.snapshots = {}  # (node id or None, type) -> (version, [resources])
        self.requests = []
        self.streams = set()
        self.nonces = {}  # nonce -> (type, version)
        self._nonce = 0
        self.grpcPort = self.restPort = None
        self._server = self._http = None

    # -- the test's side --------------------------------------------------------------------------------------------

    def start(self):
        messages()  # the Any types resources embed, registered for JSON
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self, self._server)
        self.grpcPort = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()
        plane = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as control planes serve (Twisted's pool reuses connections)

            def do_POST(self):
                plane._rest(self)

            def log_message(self, *args):
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._http.daemon_threads = True
        self.restPort = self._http.server_address[1]
        threading.Thread(target=self._http.serve_forever, daemon=True, name="xds-rest").start()
        return self

    def stop(self):
        self.dropStreams()
        if self._server is not None:
            self._server.stop(0).wait(5)
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()

    def setSnapshot(self, typeUrl, version, resources, node=None):
        """
        Serve ``resources`` (messages of ``typeUrl``) as ``version``, to ``node`` (an id) only or to every node
        without a snapshot of its own; open streams get it pushed.
        """
        with self.lock:
            self.snapshots[(node, typeUrl)] = (version, list(resources))
            for stream in list(self.streams):
                if typeUrl in stream.names and (node is None or stream.node == node):
                    self._push(stream, typeUrl)
            self.changed.notify_all()

    def snapshot(self, node, typeUrl):
        """(version, resources) served to ``node``, or None."""
        return self.snapshots.get((node, typeUrl)) or self.snapshots.get((None, typeUrl))

    def dropStreams(self):
        """End every open ADS stream (status OK): clients reconnect."""
        with self.lock:
            for stream in list(self.streams):
                stream.closed = True
                stream.wake.notify_all()

    def recorded(self, node=None, typeUrl=None):
        with self.lock:
            return [r for r in self.requests if (node is None or r.node == node)
                    and (typeUrl is None or r.typeUrl == typeUrl)]

    def waitFor(self, predicate, what, timeout=10.0):
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                value = predicate()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("control plane: timed out waiting for %s; requests: %r" % (
                        what, self.requests[-12:]))
                self.changed.wait(min(left, 0.1))

    def ackOf(self, node, typeUrl, version):
        """The request that ACKed ``version`` of ``typeUrl``, or None."""
        for r in self.recorded(node, typeUrl):
            if r.answered == (typeUrl, version) and r.error is None and r.version == version:
                return r
        return None

    def nackOf(self, node, typeUrl, version):
        for r in self.recorded(node, typeUrl):
            if r.answered == (typeUrl, version) and r.error is not None:
                return r
        return None

    def waitAck(self, node, typeUrl, version, timeout=10.0):
        return self.waitFor(lambda: self.ackOf(node, typeUrl, version), "%s to ACK %s %s" % (node, typeUrl, version),
                            timeout)

    def waitNack(self, node, typeUrl, version, timeout=10.0):
        return self.waitFor(lambda: self.nackOf(node, typeUrl, version),
                            "%s to NACK %s %s" % (node, typeUrl, version), timeout)

    # -- responses ----------------------------------------------------------------------------------------------

    def _response(self, node, typeUrl, names):
        """A DiscoveryResponse of ``node``'s snapshot of ``typeUrl`` (the named resources for a named request)."""
        version, resources = self.snapshot(node, typeUrl) or ("", [])
        if names and typeUrl not in WILDCARD:
            resources = [r for r in resources if resourceName(typeUrl, r) in names]
        self._nonce += 1
        nonce = "n%d" % (self._nonce,)
        self.nonces[nonce] = (typeUrl, version)
        packed = []
        for r in resources:
            a = any_pb2.Any()
            a.Pack(r)
            packed.append(a)
        return discovery_pb2.DiscoveryResponse(version_info=version, resources=packed, type_url=typeUrl, nonce=nonce)

    def _record(self, req, transport, node=None):
        answered = self.nonces.get(req.response_nonce)
        self.requests.append(Recorded(req, transport, answered, node))
        self.changed.notify_all()
        return answered

    def _push(self, stream, typeUrl):
        snapshot = self.snapshot(stream.node, typeUrl)
        if snapshot is None:
            return
        version = snapshot[0]
        if stream.sent.get(typeUrl) == version or stream.nacked.get(typeUrl) == version:
            return
        stream.sent[typeUrl] = version
        stream.outbox.append(self._response(stream.node, typeUrl, stream.names[typeUrl]))
        stream.wake.notify_all()

    def StreamAggregatedResources(self, request_iterator, context):
        stream = _Stream(self)
        with self.lock:
            self.streams.add(stream)

        def read():
            try:
                for req in request_iterator:
                    with self.lock:
                        if stream.node is None and req.HasField("node"):
                            stream.node = req.node.id  # Envoy sends the node in the first request only
                        answered = self._record(req, "ads", stream.node)
                        t = req.type_url
                        if req.HasField("error_detail") and answered is not None:
                            stream.nacked[t] = answered[1]
                        names = tuple(req.resource_names)
                        if t not in stream.names:
                            stream.names[t] = names
                            if req.version_info:  # a client back on a new stream has that version already
                                stream.sent[t] = req.version_info
                        elif stream.names[t] != names:
                            stream.names[t] = names
                            stream.sent.pop(t, None)  # a new name set gets an answer of its own
                        self._push(stream, t)
            except Exception:  # noqa: BLE001 - the client went away
                pass
            with self.lock:
                stream.closed = True
                stream.wake.notify_all()

        reader = threading.Thread(target=read, daemon=True, name="xds-ads-reader")
        reader.start()
        try:
            while True:
                with self.lock:
                    while not stream.outbox and not stream.closed and context.is_active():
                        stream.wake.wait(0.2)
                    if stream.closed or not context.is_active():
                        return
                    out, stream.outbox = stream.outbox, []
                for response in out:
                    yield response
        finally:
            with self.lock:
                self.streams.discard(stream)

    # -- REST-JSON ------------------------------------------------------------------------------------------------

    def _rest(self, handler):
        typeUrl = {path: t for t, path in REST_PATHS.items()}.get(handler.path)
        body = handler.rfile.read(int(handler.headers.get("content-length") or 0))
        if typeUrl is None:
            handler.send_error(404)
            return
        req = discovery_pb2.DiscoveryRequest()
        try:
            json_format.Parse(body, req)
        except json_format.ParseError as e:
            handler.send_error(400, str(e))
            return
        with self.lock:
            self._record(req, "rest")
            snapshot = self.snapshot(req.node.id, typeUrl)
            if snapshot is None or snapshot[0] == req.version_info:
                handler.send_response(304)
                handler.send_header("content-length", "0")
                handler.end_headers()
                return
            response = self._response(req.node.id, typeUrl, tuple(req.resource_names))
            text = json_format.MessageToJson(response).encode()
        handler.send_response(200)
        handler.send_header("content-type", "application/json")
        handler.send_header("content-length", str(len(text)))
        handler.end_headers()
        handler.wfile.write(text)
