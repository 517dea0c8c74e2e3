"""
A real reactor for in-process integration tests (real sockets, kazoo's and treq's callbacks): the global reactor
runs in one daemon thread for the rest of the test run, started on first use; a test hands it work with
``onReactor`` and waits, bounded, for the result.  Unit tests keep using Clock and MemoryReactor; nothing else in
the suite runs the global reactor in-process.
"""

import threading

from twisted.internet import defer, threads

_thread = None
_lock = threading.Lock()


def reactor():
    """The global reactor, running in its thread."""
    global _thread
    from twisted.internet import reactor as r
    with _lock:
        if _thread is None:
            _thread = threading.Thread(target=r.run, kwargs={"installSignalHandlers": False},
                                       name="test-reactor", daemon=True)
            _thread.start()
    return r


def onReactor(f, *args, timeout=15.0, **kwargs):
    """
    Call ``f(*args, **kwargs)`` in the reactor thread and return its result, waiting for a Deferred to fire; fails
    after ``timeout`` seconds (the Deferred is cancelled).
    """
    r = reactor()

    def call():
        d = defer.maybeDeferred(f, *args, **kwargs)
        return d.addTimeout(timeout, r)

    return threads.blockingCallFromThread(r, call)


def waitFor(predicate, timeout=15.0, interval=0.02):
    """Poll ``predicate()`` in the reactor thread until it is true; fails after ``timeout`` seconds."""
    r = reactor()

    def poll():
        d = defer.Deferred()
        deadline = r.seconds() + timeout

        def check():
            try:
                ok = predicate()
            except Exception as e:
                d.errback(e)
                return
            if ok:
                d.callback(ok)
            elif r.seconds() > deadline:
                d.errback(AssertionError("condition not met within %.1fs: %r" % (timeout, predicate)))
            else:
                r.callLater(interval, check)

        check()
        return d

    return threads.blockingCallFromThread(r, poll)
