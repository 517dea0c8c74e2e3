"""
One ZooKeeper session per ``registries`` entry, over kazoo (the maintained Python ZooKeeper client: connection
handling, session events, retries and the wire protocol are its; none of it is written here).

kazoo runs its own threads.  Every result and event it produces is brought onto the reactor thread with
``reactor.callFromThread`` before it touches any txmesh state, and everything txmesh asks of it uses kazoo's
``*_async`` calls (they return at once), so the reactor never blocks on ZooKeeper.  ``stop`` joins kazoo's thread in
the reactor's thread pool.
"""

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import NodeExistsError, NoNodeError
from kazoo.retry import KazooRetry
from twisted.internet import defer, threads
from twisted.logger import Logger
from zope.interface import implementer

from txmesh.interfaces import IZooKeeperSession


class _ChildrenWatch:
    """One ``watchChildren``: refetches (and re-arms ZooKeeper's one-shot watch) on each event and reconnect."""

    def __init__(self, session, path, callback):
        self.session = session
        self.path = path
        self.callback = callback
        self.cancelled = False
        self.lastVersion = None

    def cancel(self):
        self.cancelled = True
        self.session._watches.discard(self)

    def onEvent(self, event):
        # kazoo's thread: one bound method per watch, so kazoo's watcher set holds it once however often re-armed
        self.session._fromThread(self.fetch)

    def fetch(self):
        if self.cancelled or not self.session.connected:
            return
        client = self.session.client
        ar = client.get_children_async(self.path, watch=self.onEvent, include_data=True)
        self.session._whenDone(ar).addCallbacks(self._children, self._failed)

    def _children(self, result):
        if self.cancelled:
            return
        children, stat = result
        self.lastVersion = str(stat.pzxid)
        self.callback(sorted(children), self.lastVersion)

    def _failed(self, failure):
        if self.cancelled:
            return
        if failure.check(NoNodeError):
            # the parent does not exist (yet): no children; an exists() watch tells when it is created
            self.lastVersion = "0"
            self.callback([], "0")
            ar = self.session.client.exists_async(self.path, watch=self.onEvent)
            self.session._whenDone(ar).addCallbacks(self._exists, self._logged)
            return
        self._logged(failure)

    def _exists(self, stat):
        if stat is not None and not self.cancelled:
            self.fetch()  # created between the two calls

    def _logged(self, failure):
        # connection loss: the reconnect refetches every watch
        self.session.log.debug("zookeeper watch of {path} failed: {f}", path=self.path, f=failure.getErrorMessage())


@implementer(IZooKeeperSession)
class ZooKeeperSession:
    """
    @param config: a txmesh.discovery_config.ZooKeeperRegistryConfig.
    @param reactor: the reactor (callFromThread, a thread pool for ``stop``).
    @param clientFactory: ``clientFactory(**kwargs) -> KazooClient`` (tests may wrap it).
    """

    log = Logger()

    def __init__(self, config, reactor, clientFactory=KazooClient):
        self.config = config
        self.reactor = reactor
        retry = KazooRetry(max_tries=-1, delay=0.1, backoff=2, max_delay=5.0, ignore_expire=False)
        self.client = clientFactory(hosts=config.hosts, timeout=config.sessionTimeout, connection_retry=retry,
                                    command_retry=KazooRetry(max_tries=3, delay=0.1, max_delay=1.0))
        self.connected = False
        self.state = "disconnected"
        self.sessionsEstablished = 0  # counts new sessions (first connect, and each after expiry)
        self._listeners = []
        self._watches = set()
        self._ephemerals = {}  # path -> data, kept across session loss
        self._removals = set()  # paths removed while disconnected: deleted on reconnect (the session may survive)
        self._startCalled = False
        self._connectWaiters = []
        self._stopped = False
        self._sessionId = None
        self.client.add_listener(self._kazooState)

    # -- kazoo's thread -> reactor --

    def _fromThread(self, f, *args):
        if not self._stopped:
            self.reactor.callFromThread(f, *args)

    def _whenDone(self, asyncResult):
        """A Deferred firing on the reactor with a kazoo IAsyncResult's value (or failing with its exception)."""
        d = defer.Deferred()

        def done(ar):
            try:
                value = ar.get_nowait()
            except Exception as e:
                self.reactor.callFromThread(d.errback, e)
            else:
                self.reactor.callFromThread(d.callback, value)

        asyncResult.rawlink(done)
        return d

    def _kazooState(self, state):
        self._fromThread(self._stateChanged, state)
        return False  # stay registered

    # -- on the reactor --

    def _stateChanged(self, state):
        if self._stopped:
            return
        if state == KazooState.CONNECTED:
            # kazoo reports CONNECTED both when its state listener fires and when start_async completes; act on the
            # transition only
            if self.connected:
                return
            self.connected = True
            self.state = "connected"
            sessionId = self.client.client_id[0] if self.client.client_id else None
            if sessionId != self._sessionId:
                self._sessionId = sessionId
                self.sessionsEstablished += 1
                self.log.info("zookeeper registry {name}: session 0x{sid:x} established ({hosts})",
                              name=self.config.name, sid=sessionId or 0, hosts=self.config.hosts)
            removals, self._removals = self._removals, set()
            for path in removals:
                self._whenDone(self.client.delete_async(path)).addErrback(self._removalFailed, path)
            for path, data in list(self._ephemerals.items()):
                self._create(path, data)
            for w in list(self._watches):
                w.fetch()
            waiters, self._connectWaiters = self._connectWaiters, []
            for d in waiters:
                d.callback(None)
        elif state == KazooState.SUSPENDED:
            self.connected = False
            self.state = "suspended"
            self.log.warn("zookeeper registry {name}: connection lost, reconnecting", name=self.config.name)
        else:  # LOST: the session expired; kazoo reconnects with a new one
            self.connected = False
            self.state = "lost"
            self.log.warn("zookeeper registry {name}: session lost", name=self.config.name)
        for listener in list(self._listeners):
            try:
                listener(self.state)
            except Exception:
                self.log.failure("zookeeper state listener failed")

    def start(self):
        if not self._startCalled:
            self._startCalled = True
            self.client.start_async()
        return self._whenConnected()

    def _whenConnected(self):
        if self.connected:
            return defer.succeed(None)
        d = defer.Deferred()
        self._connectWaiters.append(d)
        return d

    def stop(self):
        self._stopped = True
        self.connected = False
        waiters, self._connectWaiters = self._connectWaiters, []
        for d in waiters:
            d.cancel()
        for w in list(self._watches):
            w.cancel()
        client = self.client

        def stopClient():
            try:
                client.stop()
            finally:
                client.close()

        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), stopClient)

    def addStateListener(self, callback):
        self._listeners.append(callback)

    def removeStateListener(self, callback):
        if callback in self._listeners:
            self._listeners.remove(callback)

    def watchChildren(self, path, callback):
        w = _ChildrenWatch(self, path, callback)
        self._watches.add(w)
        if self.connected:
            w.fetch()
        return w

    @defer.inlineCallbacks
    def getChildrenData(self, path):
        try:
            children = yield self._whenDone(self.client.get_children_async(path))
        except NoNodeError:
            return {}
        out = {}
        for child in children:
            try:
                data, _ = yield self._whenDone(self.client.get_async(path.rstrip("/") + "/" + child))
            except NoNodeError:
                continue
            out[child] = data
        return out

    def ensureEphemeral(self, path, data=b""):
        self._ephemerals[path] = data
        self._removals.discard(path)
        if not self.connected:
            # the connect creates it; a second create then finds it ours
            return self._whenConnected().addCallback(
                lambda _: self._create(path, data) if self._ephemerals.get(path) == data else None)
        return self._create(path, data)

    def _create(self, path, data):
        ar = self.client.create_async(path, data, ephemeral=True, makepath=True)
        return self._whenDone(ar).addErrback(self._createFailed, path, data)

    def _createFailed(self, failure, path, data):
        failure.trap(NodeExistsError)
        # a node of ours from a session that has not expired on the server yet, or somebody else's: take it over
        return self._whenDone(self.client.exists_async(path)).addCallback(self._existing, path, data)

    def _existing(self, stat, path, data):
        if stat is None:
            return self._create(path, data)
        if self.client.client_id and stat.ephemeralOwner == self.client.client_id[0]:
            return None
        d = self._whenDone(self.client.delete_async(path))
        d.addErrback(lambda f: f.trap(NoNodeError))
        return d.addCallback(lambda _: self._create(path, data) if path in self._ephemerals else None)

    def _removalFailed(self, failure, path):
        if not failure.check(NoNodeError) and path not in self._ephemerals:
            self._removals.add(path)  # lost the connection again: the next reconnect tries again

    def removeEphemeral(self, path):
        self._ephemerals.pop(path, None)
        if not self.connected:
            # the node goes with the session if it expires; if the session survives the outage, it is deleted on
            # the reconnect
            self._removals.add(path)
            return defer.succeed(None)
        d = self._whenDone(self.client.delete_async(path))
        return d.addErrback(lambda f: f.trap(NoNodeError))

