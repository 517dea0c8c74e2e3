"""
The ``etcd`` discovery source (issue 12, part 1): a cluster's hosts are the keys under a prefix in etcd, watched
through the registry's EtcdClient (txmesh.discovery.etcd); the host set's version is the etcd revision.

One key per host.  Its value says where the host is, in the first form that fits:

1. a JSON object ``{"address": "host:port", "weight": 1..128, "priority": 0..127, "locality": "zone",
   "metadata": {"key": "value"}}``, every field optional (``address`` defaults to the key's last segment;
   other fields are ignored, so tools may add their own);
2. a plain ``host:port`` (or ``[v6]:port``);
3. anything else, or nothing: the key's last segment is the address (``/services/orders/10.0.0.5:8080``).

So ``etcdctl put /services/orders/a 10.0.0.5:8080``, ``etcdctl put /services/orders/10.0.0.5:8080 ''`` and what
txmesh's own etcd registration writes (a JSON value) all read the same.  An entry that gives no valid address is
skipped (logged once, counted in ``discovery_etcd_invalid_entries``); two keys naming one address give one host (the
first key in order).
"""

import json
from dataclasses import dataclass

from twisted.logger import Logger
from zope.interface import implementer

from txmesh.config import EndpointConfig
from txmesh.config_reader import hostPort
from txmesh.interfaces import IDiscoverySource, IDiscoverySourceFactory


@dataclass(frozen=True, slots=True)
class EtcdSourceConfig:
    """``clusters[].discovery`` of ``type: etcd``."""

    prefix: str


class _Reasons:
    """hostPort's reader, turning its ConfigError into a ValueError with the reason only."""

    @staticmethod
    def error(reason, path):
        return ValueError(reason)


def _address(text):
    return hostPort(_Reasons, text.strip(), "")


def _integer(doc, name, default, low, high):
    value = doc.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError("%s must be an integer from %d to %d" % (name, low, high))
    return value


def parseEntry(key, value):
    """
    One key and its value (bytes) as an EndpointConfig.  @raise ValueError: saying why it gives no host.
    """
    segment = key.rstrip("/").rpartition("/")[2]
    text = value.decode("utf-8", "replace").strip()
    if text.startswith("{"):
        try:
            doc = json.loads(text)
        except ValueError as e:
            raise ValueError("value is not valid JSON: %s" % (e,)) from None
        if not isinstance(doc, dict):
            raise ValueError("value is not a JSON object")
        address = doc.get("address", segment)
        if not isinstance(address, str):
            raise ValueError("address must be a string host:port")
        host, port = _address(address)
        locality = doc.get("locality", "")
        if not isinstance(locality, str):
            raise ValueError("locality must be a string")
        metadata = doc.get("metadata") or {}
        if not isinstance(metadata, dict) or any(isinstance(v, (dict, list)) for v in metadata.values()):
            raise ValueError("metadata must be an object of strings, numbers or booleans")
        pairs = tuple(sorted((str(k), v if isinstance(v, str) else json.dumps(v)) for k, v in metadata.items()))
        return EndpointConfig(host, port, _integer(doc, "weight", 1, 1, 128), _integer(doc, "priority", 0, 0, 127),
                              locality, pairs)
    try:
        host, port = _address(text)
    except ValueError:
        try:
            host, port = _address(segment)
        except ValueError:
            raise ValueError("neither the value nor the key's last segment is host:port") from None
    return EndpointConfig(host, port)


@implementer(IDiscoverySource)
class EtcdSource:
    """
    One cluster's hosts from the keys under ``config.prefix``.

    @param context: a txmesh.discovery.base.SourceContext; its ``registry`` is the IEtcdClient.
    @param sink: the cluster's IHostSetSink.
    """

    log = Logger()

    def __init__(self, config, context, sink):
        self.config = config
        self.client = context.registry
        self.clusterName = context.clusterName
        self.sink = sink
        self.invalidEntries = context.stats.counter(
            "discovery_etcd_invalid_entries", help="etcd keys skipped because they give no valid host:port")
        self.watch = None
        self.revision = None
        self.keys = 0
        self.hosts = 0
        self.invalid = {}  # key -> why (the last set's)
        self.lastError = None
        self._parsed = {}  # key -> (value, EndpointConfig or ValueError): a change re-parses only what changed

    def start(self):
        self.watch = self.client.watchPrefix(self.config.prefix, self._changed, self._failed)

    def stop(self):
        if self.watch is not None:
            self.watch.cancel()
            self.watch = None

    def describe(self):
        return {"registry": self.client.config.name, "prefix": self.config.prefix, "revision": self.revision,
                "keys": self.keys, "hosts": self.hosts, "connected": self.client.connected,
                "invalid": dict(sorted(self.invalid.items())[:20]), "error": self.lastError,
                "watch": self.watch.describe() if self.watch is not None else None}

    def _changed(self, items, revision):
        parsed = self._parsed
        for key, value in items.items():
            cached = parsed.get(key)
            if cached is None or (cached[0] is not value and cached[0] != value):
                parsed[key] = (value, self._parse(key, value))
        if len(parsed) != len(items):
            for key in [k for k in parsed if k not in items]:
                del parsed[key]
        endpoints = []
        seen = set()
        invalid = {}
        for key in sorted(parsed):
            result = parsed[key][1]
            if isinstance(result, ValueError):
                invalid[key] = str(result)
                continue
            address = (result.host, result.port)
            if address not in seen:
                seen.add(address)
                endpoints.append(result)
        self.invalid = invalid
        self.revision = revision
        self.keys = len(items)
        self.hosts = len(endpoints)
        self.lastError = None
        self.sink.hostsUpdated(tuple(endpoints), revision)

    def _parse(self, key, value):
        """An EndpointConfig, or the ValueError saying why the entry gives none (logged and counted once)."""
        try:
            return parseEntry(key, value)
        except ValueError as e:
            self.invalidEntries.inc()
            self.log.warn("cluster {cluster}: etcd key {key} skipped: {why}", cluster=self.clusterName, key=key, why=e)
            return e

    def _failed(self, reason):
        self.lastError = reason
        self.sink.sourceFailed(reason)


@implementer(IDiscoverySourceFactory)
class EtcdSourceFactory:
    """``type: etcd``: keys ``prefix`` (required); needs a ``registries`` entry of type etcd."""

    name = "etcd"
    keys = ("prefix",)
    registryType = "etcd"

    def buildConfig(self, raw, context):
        prefix = raw.get("prefix")
        if prefix is None:
            raise context.error("missing required key 'prefix' (the etcd key prefix of the cluster's hosts)")
        if not isinstance(prefix, str) or not prefix or not prefix.isprintable():
            raise context.error("must be a non-empty key prefix such as /services/orders/", "prefix")
        return EtcdSourceConfig(prefix=prefix)

    def makeSource(self, config, context, sink):
        return EtcdSource(config, context, sink)
