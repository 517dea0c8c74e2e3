"""
Scripts the reactor tests (tests/test_reactor.py) run in a subprocess each, so the global reactor they install
never leaks into the test process.  ``python tests/reactor_scripts.py SCENARIO REACTOR`` prints one JSON object;
REACTOR is ``txmesh`` (txmesh.reactor) or ``epoll`` (Twisted's, for comparison).  Every scenario stops the
reactor itself and has a 10 s watchdog.
"""

import json
import os
import sys
import threading


def install(kind):
    if kind == "txmesh":
        from txmesh import reactor as txreactor

        txreactor.install()
    else:
        from twisted.internet import epollreactor

        epollreactor.install()
    from twisted.internet import reactor

    reactor.callLater(10, reactor.stop)  # watchdog: the test fails on missing output, never hangs
    return reactor


def exceptionInDataReceived(reactor, out):
    """A server whose dataReceived raises: the failure is logged with its traceback and the connection closed."""
    from twisted.internet import protocol
    from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
    from twisted.logger import globalLogPublisher

    events = []
    globalLogPublisher.addObserver(events.append)

    class Boom(protocol.Protocol):
        def dataReceived(self, data):
            raise ValueError("boom in dataReceived")

        def connectionLost(self, reason):
            out["serverLost"] = reason.type.__name__

    class Client(protocol.Protocol):
        def connectionMade(self):
            self.transport.write(b"hello")

        def connectionLost(self, reason):
            out["clientLost"] = reason.type.__name__
            reactor.callLater(0.05, finish)

    def finish():
        errors = [e for e in events if e.get("isError") and "failure" in e]
        out["errors"] = len(errors)
        if errors:
            e = errors[0]
            out["system"] = e.get("system")
            out["log_system"] = e.get("log_system")
            out["failureType"] = e["failure"].type.__name__
            out["traceback"] = e["failure"].getTraceback()
            out["keys"] = sorted(k for k in e if k in ("isError", "why", "failure", "system", "log_system",
                                                        "log_failure", "log_level", "log_format"))
        reactor.stop()

    def listening(port):
        out["serverTransport"] = type(port).__module__ + "." + type(port).__name__
        ep = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        ep.connect(protocol.Factory.forProtocol(Client))

    TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(protocol.Factory.forProtocol(Boom)).addCallback(
        listening)


def basics(reactor, out):
    """Timers in order, callFromThread from another thread, spawnProcess, and an echo of 4 MiB over TCP."""
    from twisted.internet import defer, protocol, task
    from twisted.internet.endpoints import clientFromString, serverFromString

    order = []
    reactor.callLater(0.02, order.append, "b")
    reactor.callLater(0.01, order.append, "a")
    reactor.callLater(0, order.append, "0")

    fromThread = defer.Deferred()
    threading.Thread(target=lambda: reactor.callFromThread(fromThread.callback, threading.get_ident())).start()

    class Proc(protocol.ProcessProtocol):
        def __init__(self):
            self.data = b""
            self.done = defer.Deferred()

        def outReceived(self, data):
            self.data += data

        def processEnded(self, reason):
            self.done.callback((self.data, reason.value.exitCode))

    proc = Proc()
    reactor.spawnProcess(proc, sys.executable, [sys.executable, "-c", "print('spawned')"], env=os.environ)

    payload = os.urandom(4 << 20)

    class Echo(protocol.Protocol):
        def dataReceived(self, data):
            self.transport.write(data)

        def connectionMade(self):
            out["serverConn"] = type(self.transport).__module__ + "." + type(self.transport).__name__

    class Sender(protocol.Protocol):
        def __init__(self):
            self.got = []
            self.n = 0
            self.done = defer.Deferred()

        def connectionMade(self):
            out["clientConn"] = type(self.transport).__module__ + "." + type(self.transport).__name__
            for i in range(0, len(payload), 100000):  # many writes: some at once, the rest queued behind
                self.transport.write(payload[i:i + 100000])

        def dataReceived(self, data):
            self.got.append(data)
            self.n += len(data)
            if self.n >= len(payload):
                self.transport.loseConnection()

        def connectionLost(self, reason):
            self.done.callback(b"".join(self.got) == payload)

    @defer.inlineCallbacks
    def run():
        port = yield serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(
            protocol.Factory.forProtocol(Echo))
        sender = yield clientFromString(reactor, "tcp:127.0.0.1:%d" % port.getHost().port).connect(
            protocol.Factory.forProtocol(Sender))
        out["echoOk"] = yield sender.done
        # systemd: endpoints adopt a listening descriptor; a refused connect fails as Twisted reports it
        import socket

        with socket.create_server(("127.0.0.1", 0)) as listening:
            adopted = reactor.adoptStreamPort(listening.fileno(), socket.AF_INET, protocol.Factory.forProtocol(Echo))
            out["adopted"] = type(adopted).__module__ + "." + type(adopted).__name__
            yield adopted.stopListening()
        with socket.create_server(("127.0.0.1", 0)) as closed:
            closedPort = closed.getsockname()[1]
        try:
            yield clientFromString(reactor, "tcp:127.0.0.1:%d" % closedPort).connect(
                protocol.Factory.forProtocol(Sender))
        except Exception as e:
            out["refused"] = type(e).__name__
        out["threadOk"] = (yield fromThread) != threading.get_ident()
        data, code = yield proc.done
        out["spawned"] = [data.decode().strip(), code]
        # the timers fire in their order whatever the steps above took: wait past the last one (0.02 s) first
        yield task.deferLater(reactor, 0.05, lambda: None)
        out["timers"] = order
        yield port.stopListening()
        reactor.stop()

    run().addErrback(lambda f: (out.__setitem__("error", f.getTraceback()), reactor.stop()))


def startTLS(reactor, out):
    """Plain bytes (1 MiB, more than a send takes through a small SO_SNDBUF), then startTLS on both sides, then an echo under TLS."""
    from twisted.internet import protocol, ssl
    from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint

    from txmesh.tcp import DirectWriteMixin

    key = ssl.KeyPair.generate(size=2048)
    serverOptions = key.selfSignedCert(1, CN="localhost").options()
    plain = os.urandom(1 << 20)

    class Server(protocol.Protocol):
        tls = False

        def connectionMade(self):
            import socket

            self.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

        def dataReceived(self, data):
            if self.tls:
                self.transport.write(b"echo:" + data)
            elif data == b"STARTTLS\n":
                self.transport.write(plain)  # the kernel takes part: the rest is held by txmesh's transport
                self.transport.write(b"OK\n")
                if isinstance(self.transport, DirectWriteMixin):
                    out["heldAtStartTLS"] = bool(self.transport.held)
                self.transport.startTLS(serverOptions)
                self.tls = True

    class Client(protocol.Protocol):
        def connectionMade(self):
            self.buf = b""
            self.tls = False
            self.transport.write(b"STARTTLS\n")

        def dataReceived(self, data):
            if not self.tls:
                self.buf += data
                if len(self.buf) == len(plain) + 3:
                    out["plainOk"] = self.buf == plain + b"OK\n"
                    self.transport.startTLS(ssl.CertificateOptions())
                    self.tls = True
                    self.buf = b""
                    self.transport.write(b"secret")
            else:
                self.buf += data
                if self.buf == b"echo:secret":
                    out["tlsEcho"] = True
                    self.transport.loseConnection()

        def connectionLost(self, reason):
            out["clientLost"] = reason.type.__name__
            reactor.callLater(0, reactor.stop)

    def listening(port):
        TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(
            protocol.Factory.forProtocol(Client))

    TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(protocol.Factory.forProtocol(Server)).addCallback(
        listening)


SCENARIOS = {"exception": exceptionInDataReceived, "basics": basics, "starttls": startTLS}


def main():
    scenario, kind = sys.argv[1], sys.argv[2]
    reactor = install(kind)
    out = {"reactor": type(reactor).__module__ + "." + type(reactor).__name__}
    reactor.callWhenRunning(SCENARIOS[scenario], reactor, out)
    reactor.run()
    sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
