"""
The ``file`` discovery source (issue 12, part 1), after Envoy's filesystem EDS: a YAML or JSON endpoints file,
replaced by its writer with an atomic rename, read again whenever it changes.

Changes are seen through inotify on the file's directory (``twisted.internet.inotify``) where the reactor and the
platform have it, and by a stat poll every ``refresh_interval`` (device, inode, mtime, size) as the fallback and the
safety net (a directory that did not exist at start, a ConfigMap's symlink swap).  A file that does not parse or
validate is refused with a ``file:line: key.path: reason`` message (a ConfigError reported to the sink, which
counts it as ``update_rejected`` and keeps the last set); each version of a file is read once.

The file (docs/discovery.md, "Watched files")::

    version: "42"            # optional: shown in /clusters (default: a hash of the content)
    endpoints:
      - {address: "10.0.0.1:8080", weight: 2, priority: 0, locality: "eu/a", metadata: {version: "1.2"}}

or Envoy's ClusterLoadAssignment (alone, or as the one resource of a DiscoveryResponse with ``version_info``).
"""

import hashlib
import json
import os
from dataclasses import dataclass

import yaml
from twisted.internet.interfaces import IReactorFDSet
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.python.runtime import platform
from zope.interface import implementer

from txmesh.config import EndpointConfig, buildEndpoints
from txmesh.config_reader import Reader, hostPort, joinPath, parseYAML
from txmesh.errors import ConfigError
from txmesh.interfaces import IDiscoverySource, IDiscoverySourceFactory

MAX_FILE_SIZE = 64 << 20  # a file of 10,000 endpoints is about 1 MiB
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# Envoy's health_status values that take a host out of the set
_ENVOY_EXCLUDED = frozenset({"UNHEALTHY", "DRAINING", "TIMEOUT"})


@dataclass(frozen=True, slots=True)
class FileSourceConfig:
    path: str  # absolute
    refreshInterval: float = 5.0


@implementer(IDiscoverySourceFactory)
class FileSourceFactory:
    name = "file"
    keys = ("path", "refresh_interval")
    registryType = None

    def buildConfig(self, raw, context):
        r = context.reader
        if not raw.get("path"):
            raise context.error("missing required key 'path' (the endpoints file to watch)")
        path = r.get(raw, context.keyPath, "path", str)
        if not context.filename.startswith("<"):  # relative to the mesh.yaml, as plugin_paths
            path = os.path.join(os.path.dirname(os.path.abspath(context.filename)), path)
        interval = r.duration(raw, context.keyPath, "refresh_interval", 5.0)
        if interval < 0.01:
            raise context.error("must be at least 10ms", "refresh_interval")
        return FileSourceConfig(os.path.abspath(path), interval)

    def makeSource(self, config, context, sink):
        return FileSource(config, context.reactor, sink)


def parseEndpointsFile(data, filename):
    """
    The endpoints of an endpoints file's bytes.  @return: (tuple of EndpointConfig, version str).
    @raise ConfigError: naming ``filename``, the line and the key path.

    JSON is read with the json module and YAML with libyaml when they can (fast: a file changing a thousand times a
    second); only a file that fails is read again with line marks, for the error's line.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError("not UTF-8 text: %s" % (e,), filename=filename) from None
    raw = None
    if text.lstrip().startswith("{"):
        try:
            raw = json.loads(text)
        except ValueError:
            raw = None
    if raw is None:
        try:
            raw = yaml.load(text, Loader=_YAML_LOADER)
        except (yaml.YAMLError, ValueError, RecursionError):
            raw = None
    if raw is None:
        if not text.strip():
            raise ConfigError("the endpoints file is empty", filename=filename, line=1)
        raw, lines = parseYAML(text, filename)  # raises the parse error with its line
        return _endpoints(Reader(filename, lines), raw, data)
    try:
        return _endpoints(Reader(filename, {}), raw, data)
    except ConfigError:
        raw, lines = parseYAML(text, filename)
        return _endpoints(Reader(filename, lines), raw, data)


def _endpoints(r, raw, data):
    r.check(raw, "", dict)
    version = None
    if "resources" in raw:  # a DiscoveryResponse holding one ClusterLoadAssignment
        r.mapping(raw, "", required=("resources",), optional=("version_info", "type_url", "nonce"))
        resources = r.list(raw, "", "resources")
        if len(resources) != 1:
            raise r.error("must hold exactly one ClusterLoadAssignment, got %d" % (len(resources),), "resources")
        version = raw.get("version_info")
        endpoints = _envoyEndpoints(r, resources[0], "resources[0]")
    elif "cluster_name" in raw or _hasLbEndpoints(raw.get("endpoints")):
        endpoints = _envoyEndpoints(r, raw, "")
    else:
        r.mapping(raw, "", required=("endpoints",), optional=("version",))
        version = raw.get("version")
        endpoints = buildEndpoints(r, r.list(raw, "", "endpoints"), "endpoints")
    if version is None:
        version = "sha256:" + hashlib.sha256(data).hexdigest()[:12]
    elif isinstance(version, (dict, list)):
        raise r.error("must be a string or a number", "version")
    return endpoints, str(version)


def _hasLbEndpoints(groups):
    """``endpoints`` in Envoy's shape (locality groups of ``lb_endpoints``) rather than txmesh's."""
    return isinstance(groups, list) and any(isinstance(g, dict) and "lb_endpoints" in g for g in groups)


def _envoyEndpoints(r, cla, path):
    """Envoy's ClusterLoadAssignment: endpoints[].lb_endpoints[].endpoint.address.socket_address."""
    r.mapping(cla, path, optional=("cluster_name", "endpoints", "policy", "@type"))
    out = []
    seen = {}
    for i, group in enumerate(r.list(cla, path, "endpoints")):
        gPath = "%s[%d]" % (joinPath(path, "endpoints"), i)
        r.mapping(group, gPath, optional=("lb_endpoints", "priority", "locality", "load_balancing_weight"))
        priority = r.integer(group, gPath, "priority", 0, 0, 127)
        lm = r.mapping(group.get("locality"), joinPath(gPath, "locality"), optional=("region", "zone", "sub_zone"))
        locality = "/".join(str(lm[k]) for k in ("region", "zone", "sub_zone") if lm.get(k))
        for j, lb in enumerate(r.list(group, gPath, "lb_endpoints")):
            lPath = "%s[%d]" % (joinPath(gPath, "lb_endpoints"), j)
            r.mapping(lb, lPath, required=("endpoint",),
                      optional=("load_balancing_weight", "health_status", "metadata"))
            ePath = joinPath(lPath, "endpoint")
            e = r.mapping(lb["endpoint"], ePath, required=("address",), optional=("hostname", "health_check_config"))
            aPath = joinPath(ePath, "address")
            a = r.mapping(e["address"], aPath, required=("socket_address",))
            sPath = joinPath(aPath, "socket_address")
            s = r.mapping(a["socket_address"], sPath, required=("address", "port_value"), optional=("protocol",))
            host = r.get(s, sPath, "address", str)
            port = r.integer(s, sPath, "port_value", None, 1, 65535)
            host, port = hostPort(r, ("[%s]:%d" if ":" in host else "%s:%d") % (host, port), sPath)
            weight = r.integer(lb, lPath, "load_balancing_weight", 1, 1, 128)
            if r.get(lb, lPath, "health_status", str, "UNKNOWN") in _ENVOY_EXCLUDED:
                continue
            if (host, port) in seen:
                raise r.error("duplicate endpoint '%s:%d' (also %s)" % (host, port, seen[(host, port)]), sPath)
            seen[(host, port)] = sPath
            out.append(EndpointConfig(host, port, weight, priority, locality))
    return tuple(out)


class WatchedFile:
    """
    One file watched for changes: through inotify on its directory (``twisted.internet.inotify``) where the reactor
    and the platform have it, and by a stat poll every ``refreshInterval`` (device, inode, mtime, size) as the
    fallback and the safety net.  Each version of the file is read once.  Used by the ``file`` discovery source and by
    listener TLS material (certificates, keys and CA bundles that rotate: txmesh.tls.server).

    @param reactor: an IReactorTime; with IReactorFDSet too (a real reactor) changes are seen through inotify.
    @param read: ``read(data)``, called with the file's bytes once it changed (and at ``start``).
    @param failed: ``failed(reason)``, called once per cause when the file cannot be read: a str, or a Failure
        (too large, or an unexpected error while checking, which is also logged).
    """

    log = Logger()

    def __init__(self, path, refreshInterval, reactor, read, failed, maxSize=MAX_FILE_SIZE):
        self.path = path
        self.refreshInterval = refreshInterval
        self.reactor = reactor
        self.read = read
        self.failed = failed
        self.maxSize = maxSize
        self.directory, self.name = os.path.split(path)
        self._bname = os.fsencode(self.name)
        self._seen = None  # what the last check found: a stat key, or ("error", errno)
        self._poll = None
        self._notifier = None
        self._scheduled = None
        self._force = False
        self.reads = 0
        self.watching = "poll"

    def start(self):
        """Read the file now, then watch it."""
        self.check()
        self._watch()
        self._poll = LoopingCall(self._checkLogged)
        self._poll.clock = self.reactor
        self._poll.start(self.refreshInterval, now=False)

    def stop(self):
        if self._poll is not None and self._poll.running:
            self._poll.stop()
        self._poll = None
        if self._scheduled is not None and self._scheduled.active():
            self._scheduled.cancel()
        self._scheduled = None
        notifier, self._notifier = self._notifier, None
        if notifier is not None:
            notifier.loseConnection()

    def _watch(self):
        if not (platform.supportsINotify() and IReactorFDSet.providedBy(self.reactor)):
            return
        from twisted.internet import inotify
        notifier = None
        try:
            notifier = inotify.INotify(self.reactor)
            notifier.startReading()
            notifier.watch(FilePath(self.directory), callbacks=[self._notified], mask=(
                inotify.IN_MOVED_TO | inotify.IN_MOVED_FROM | inotify.IN_CREATE | inotify.IN_CLOSE_WRITE
                | inotify.IN_DELETE | inotify.IN_ATTRIB))
        except (inotify.INotifyError, OSError) as e:
            if notifier is not None:
                notifier.loseConnection()
            self.log.warn("cannot watch {d} with inotify ({e}); polling {p} every {s}s", d=self.directory, e=e,
                          p=self.path, s=self.refreshInterval)
            return
        self._notifier = notifier
        self.watching = "inotify"

    def _notified(self, _watch, filepath, mask):
        # our file replaced or written: read it even if its stat looks the same (mtime granularity); another entry
        # of the directory (a symlink swap): compare the stat
        if filepath.asBytesMode().basename() == self._bname:
            self._force = True
        if self._scheduled is None:  # one read for the events of one reactor turn
            self._scheduled = self.reactor.callLater(0, self._notifiedCheck)

    def _notifiedCheck(self):
        self._scheduled = None
        force, self._force = self._force, False
        self._checkLogged(force)

    def _checkLogged(self, force=False):
        """``check`` from a timer or a watch: an unexpected error is logged and reported, and watching goes on."""
        try:
            self.check(force)
        except Exception:
            failure = Failure()
            self.log.failure("checking {path}", failure, path=self.path)
            self.failed(failure)

    def check(self, force=False):
        """Read the file if it changed since the last check (or ``force``) and hand its bytes to ``read``."""
        path = self.path
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            self._failed(("error", e.errno), "cannot read %s: %s" % (path, e.strerror))
            return
        try:
            st = os.fstat(fd)
            key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
            if key == self._seen and not force:
                return
            if st.st_size > self.maxSize:
                self._seen = key
                self.failed(Failure(ConfigError("larger than %d bytes" % (self.maxSize,), filename=path)))
                return
            chunks = []
            while True:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
        except OSError as e:
            self._failed(("error", e.errno), "cannot read %s: %s" % (path, e.strerror))
            return
        finally:
            os.close(fd)
        self._seen = key
        self.reads += 1
        self.read(b"".join(chunks))

    def _failed(self, key, text):
        if key != self._seen:  # once per cause, not every poll
            self._seen = key
            self.failed(text)


@implementer(IDiscoverySource)
class FileSource:
    """
    Watches one endpoints file (see the module docstring) with a L{WatchedFile}.

    @param config: its FileSourceConfig.
    @param reactor: an IReactorTime; with IReactorFDSet too (a real reactor) changes are seen through inotify.
    @param sink: the cluster's IHostSetSink.
    """

    def __init__(self, config, reactor, sink):
        self.config = config
        self.reactor = reactor
        self.sink = sink
        self.file = WatchedFile(config.path, config.refreshInterval, reactor, self._read, sink.sourceFailed)

    def start(self):
        self.file.start()

    def stop(self):
        self.file.stop()

    def check(self, force=False):
        """Read the file if it changed since the last check (or ``force``) and report what it holds."""
        self.file.check(force)

    def describe(self):
        return {"path": self.config.path, "watch": self.file.watching, "refresh_interval": self.config.refreshInterval,
                "reads": self.file.reads}

    def _read(self, data):
        try:
            endpoints, version = parseEndpointsFile(data, self.config.path)
        except ConfigError:
            self.sink.sourceFailed(Failure())
            return
        self.sink.hostsUpdated(endpoints, version)
