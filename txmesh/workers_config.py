"""
The ``workers`` key of mesh.yaml (issue 10 part 4; docs/operations.md "Workers"): how many processes serve the
listeners.  ``1`` (the default) is one process doing everything; ``N`` > 1 is a parent that binds the listeners and
serves the admin API, and N worker processes that serve the traffic (txmesh/workers.py); ``auto`` is one worker per
core this process may run on (``os.sched_getaffinity``), resolved at load.
"""

import os

from txmesh.config_reader import joinPath
from txmesh.detect_config import INTERNAL

MAX_WORKERS = 64
# listening sockets the parent can bind (or inherit) and hand to its workers
SHARED_KINDS = ("tcp", "tcp6", "unix", "systemd")


def cores(affinity=os.sched_getaffinity):
    """The number of cores this process may run on."""
    return max(1, len(affinity(0)))


def buildWorkers(r, raw, listeners, affinity=os.sched_getaffinity):
    """
    The worker count of ``raw["workers"]``: an int in 1..L{MAX_WORKERS} or ``auto``.  With more than one, every
    listener's address must be a socket the parent can hand over (L{SHARED_KINDS}, or ``internal``).
    """
    value = raw.get("workers")
    if value is None:
        return 1
    if value == "auto":
        count = cores(affinity)
    elif type(value) is int:
        if not 1 <= value <= MAX_WORKERS:
            raise r.error("must be between 1 and %d, or auto" % (MAX_WORKERS,), "workers")
        count = value
    else:
        raise r.error("must be a number of processes or auto, not %r" % (value,), "workers")
    if count > 1:
        for i, lc in enumerate(listeners):
            if lc.address == INTERNAL:
                continue
            kind = lc.address.split(":", 1)[0].strip().lower()  # checked already: a known endpoint kind
            if kind not in SHARED_KINDS:
                raise r.error("with workers: %d, a listener's address must be one of %s (the parent binds it and "
                              "hands it to the workers), not %s:" % (count, ", ".join(SHARED_KINDS), kind),
                              joinPath("listeners[%d]" % (i,), "address"))
    return count
