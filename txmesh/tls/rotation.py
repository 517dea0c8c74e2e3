"""
TLS material that rotates (issue 14 part 3), for listeners (txmesh.tls.server) and clusters (txmesh.tls.client)
alike: L{RotatingMaterial} watches the files of one ``tls`` block (L{txmesh.discovery.files.WatchedFile}) and
reloads the whole block ROTATION_SETTLE seconds after one of them changed, so a certificate and its key written one
after the other are read together.  Material that does not load (bad PEM, a key that is not the certificate's, an
unreadable CA) is refused: counted, logged once per reason, and the material loaded before stays in use.

Two ways to notice a change: ``start``/``stop`` watch continuously (inotify where the reactor has it, and a stat
poll), for what has a lifecycle (a listener); ``checkDue`` stats the files when asked, at most once per interval,
for what is only used (a cluster's connects): no timer outlives its owner.
"""

from OpenSSL import SSL
from twisted.logger import Logger

from txmesh.discovery.files import WatchedFile
from txmesh.tls.material import TLSMaterialError

ROTATION_SETTLE = 0.2  # seconds between a file change and the reload: a cert and its key written one after the other


class RotatingMaterial:
    """
    The current material of one ``tls`` block and the watches on its files.

    @param paths: the block's files (certificate chains, keys, CA bundle).
    @param interval: the stat poll's period (``start``), and the least time between two ``checkDue`` looks.
    @param reactor: IReactorTime; with IReactorFDSet too, ``start`` watches through inotify.
    @param load: ``load()`` -> new material; raises TLSMaterialError, SSL.Error or ValueError when it cannot.
    @param name: who owns the block, for the log ("listener in_http", "cluster peer_http").
    @param rotation: the counter of reloads; rotationFailed: of refused changes.
    @param serials: ``serials(material)`` -> the certificates' serials (hex str), for the log line of a reload.
    @param installed: ``installed(material)``, called when new material is in use (e.g. to drop cached sessions).
    @ivar material: what ``load`` returned last (loaded once at construction: a failure there raises).
    """

    log = Logger()

    def __init__(self, paths, interval, reactor, load, name, rotation, rotationFailed, serials,
                 installed=lambda material: None):
        self.paths = tuple(paths)
        self.interval = interval
        self.reactor = reactor
        self.load = load
        self.name = name
        self.rotation = rotation
        self.rotationFailed = rotationFailed
        self.serials = serials
        self.installed = installed
        self.material = load()
        self._watches = [WatchedFile(p, interval, reactor, self._fileChanged, self._fileFailed) for p in self.paths]
        self._reload = None
        self._lastFailure = None
        self._priming = False
        self._nextCheck = None  # checkDue: when the files are looked at next (None: prime them first)

    def _quietly(self, look):
        """``look(watch)`` for each file, its reads not taken as changes: the material came from these versions."""
        self._priming = True
        try:
            for w in self._watches:
                look(w)
        finally:
            self._priming = False

    def start(self):
        """Watch the files continuously (inotify and the stat poll)."""
        self._quietly(WatchedFile.start)

    def stop(self):
        for w in self._watches:
            w.stop()
        if self._reload is not None and self._reload.active():
            self._reload.cancel()
        self._reload = None

    def checkDue(self):
        """Stat the files if ``interval`` passed since the last look; a change reloads ROTATION_SETTLE later."""
        now = self.reactor.seconds()
        if self._nextCheck is None:
            self._quietly(WatchedFile.check)
        elif now >= self._nextCheck:
            for w in self._watches:
                w.check()
        else:
            return
        self._nextCheck = now + self.interval

    def _fileChanged(self, data):
        if self._priming:
            return
        if self._reload is None:
            self._reload = self.reactor.callLater(ROTATION_SETTLE, self.reload)

    def _fileFailed(self, reason):
        # a file gone for a moment (a rename swap); the next look reads it again, the reload reports what stays broken
        self.log.debug("{name}: {reason}", name=self.name, reason=reason)

    def reload(self):
        """
        Load the files again; what is built from now on uses them.  A failure is counted, logged once per reason,
        and leaves the current material.  @return: True if the new material is in use.
        """
        self._reload = None
        try:
            material = self.load()
        except (TLSMaterialError, SSL.Error, ValueError) as e:
            self.rotationFailed.value += 1
            reason = str(e)
            if reason != self._lastFailure:
                self._lastFailure = reason
                self.log.error("{name}: TLS files changed but cannot be used ({reason}); keeping the "
                               "certificates loaded before", name=self.name, reason=reason)
            return False
        self._lastFailure = None
        self.material = material
        self.rotation.value += 1
        self.installed(material)
        self.log.info("{name}: TLS certificates reloaded (serials {serials})", name=self.name,
                      serials=", ".join(self.serials(material)))
        return True
