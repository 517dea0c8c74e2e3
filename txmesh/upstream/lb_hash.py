"""
Consistent-hash load balancers: ring_hash (Envoy's ketama-style ring) and maglev (Envoy's Maglev table).

Both place hosts by a 64-bit hash of their address and pick by the request's hash key (``LBContext.hashKey``,
made by the route's hash policies: txmesh/upstream/hashing.py), so the same key reaches the same host while the
host set stays the same, and a host-set change moves only about the removed or added host's share of keys.  A
request without a key gets a random entry of the ring or table (so weights still hold).  When the chosen host is
unhealthy or already attempted, the pick walks on to the next entries of the ring or table: the next distinct
hosts, in an order that is itself fixed by the key.

The hash is BLAKE2b cut to 64 bits (``hashlib``, no dependency): stable across processes and machines, well
spread, about 0.3 µs for a short key.  Envoy uses xxHash64, so a txmesh ring places hosts and keys differently
from an Envoy ring with the same hosts (within txmesh every proxy agrees).

Everything is built in the constructor, that is on a host-set change; a pick is a bisection (ring, O(log n)) or an
index (table, O(1)).  Build times are in docs/resilience.md.
"""

import bisect
import hashlib

from twisted.logger import Logger
from zope.interface import implementer

from txmesh.interfaces import ILoadBalancer
from txmesh.upstream.lb import DEFAULT_LB_CONFIG, NO_OPTIONS, wasAttempted


def hash64(data, seed=b""):
    """The 64-bit hash used for hosts and keys: BLAKE2b-64 of ``data`` (bytes), salted by ``seed`` (<= 16 bytes)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8, salt=seed).digest(), "little")


def keyHash(key):
    """An LBContext.hashKey as a 64-bit int (ints are taken as they are), or None."""
    if key is None or type(key) is int:
        return key
    if isinstance(key, str):
        key = key.encode("utf-8", "surrogatepass")
    return hash64(key)


class _HashLoadBalancer:
    """
    Shared pick logic: ``entries`` is the ring or table as host indexes, ``_start(hash)`` the entry a hash lands
    on; the walk goes on from there to the next entries.
    """

    def __init__(self, hosts, random):
        self.hosts = tuple(hosts)
        self._random = random
        self.entries = []  # the ring's points or the table's entries, in order, as indexes into self.hosts

    def chooseHost(self, context=None):
        owners = self.entries
        if not owners:
            return None
        if context is None:
            key, attempted, ignoreHealth = None, None, False
        else:
            key, attempted, ignoreHealth = keyHash(context.hashKey), context.attempted, context.ignoreHealth
        if key is None:
            key = self._random.getrandbits(64)
        i = self._start(key)
        host = self.hosts[owners[i]]
        if (ignoreHealth or host.healthy) and not (attempted and wasAttempted(host, attempted)):
            return host
        return self._walk(i, attempted, ignoreHealth)

    def _walk(self, i, attempted, ignoreHealth):
        """The next entry's host that is healthy and not attempted; else the first healthy one seen; else None."""
        owners = self.entries
        hosts = self.hosts
        n = len(owners)
        seen = set()
        fallback = None
        for step in range(1, n + 1):
            index = owners[(i + step) % n]
            if index in seen:
                continue
            seen.add(index)
            host = hosts[index]
            if ignoreHealth or host.healthy:
                if not (attempted and wasAttempted(host, attempted)):
                    return host
                if fallback is None:
                    fallback = host
            if len(seen) == len(hosts):
                break
        return fallback


def ringPointsPerWeight(totalWeight, minimum, maximum):
    """
    Ring points per unit of weight: the least power of two giving ``minimum`` points or more in all, halved
    while the ring would exceed ``maximum`` (and at least 1).
    """
    per = 1
    while per * totalWeight < minimum:
        per *= 2
    while per > 1 and per * totalWeight > maximum:
        per //= 2
    return per


def _normalizedWeights(hosts):
    total = sum(h.weight for h in hosts)
    return [h.weight / total for h in hosts]


@implementer(ILoadBalancer)
class RingHashLoadBalancer(_HashLoadBalancer):
    """
    A ketama-style ring as Envoy's ring hash: each host gets ``weight * perWeight`` points on a 64-bit ring,
    hashed from ``"<address>_<n>"``, so that the ring has at least ``minimum_ring_size`` points (and at most
    ``maximum_ring_size``); a key goes to the first point at or after its hash.

    Unlike Envoy, which rescales every host's points from the lightest share on each change (moving some keys
    between hosts that stayed), ``perWeight`` is a power of two (ringPointsPerWeight): a host-set change leaves
    the other hosts' points where they were unless the total weight crosses a power of two, so removing a host
    moves its keys only.
    """

    def __init__(self, hosts, random, options=None):
        super().__init__(hosts, random)
        options = options or NO_OPTIONS
        config = options.config or DEFAULT_LB_CONFIG
        hosts = self.hosts
        points = []
        counts = [0] * len(hosts)
        if hosts:
            perWeight = ringPointsPerWeight(sum(h.weight for h in hosts), config.minimumRingSize,
                                            config.maximumRingSize)
            for index, host in enumerate(hosts):
                prefix = host.address.encode("ascii", "replace") + b"_"
                n = counts[index] = host.weight * perWeight
                points.extend((hash64(prefix + b"%d" % i), index) for i in range(n))
            points.sort()
        self._hashes = [h for h, _ in points]
        self.entries = [i for _, i in points]
        self.size = len(points)
        if options.stats is not None:
            stats = options.stats
            stats.gauge("ring_hash_lb_size", help="Points on the ring_hash ring.").value = self.size
            stats.gauge("ring_hash_lb_min_hashes_per_host",
                        help="Fewest ring points of one host.").value = min(counts, default=0)
            stats.gauge("ring_hash_lb_max_hashes_per_host",
                        help="Most ring points of one host.").value = max(counts, default=0)

    def _start(self, key):
        i = bisect.bisect_left(self._hashes, key)
        return 0 if i == len(self._hashes) else i


@implementer(ILoadBalancer)
class MaglevLoadBalancer(_HashLoadBalancer):
    """
    Envoy's Maglev: a table of ``table_size`` (prime, 65537 by default) entries, filled by each host in turn along
    its own permutation (offset and skip from two hashes of its address), a host of weight share ``w`` taking a
    turn in ``w / max share`` of the rounds; a key goes to entry ``hash % table_size``.  Every host holds its share
    of the table to within one entry per round, and removing a host moves little more than its own entries.
    """

    log = Logger()

    def __init__(self, hosts, random, options=None):
        super().__init__(hosts, random)
        options = options or NO_OPTIONS
        size = (options.config or DEFAULT_LB_CONFIG).tableSize
        self.tableSize = size
        hosts = self.hosts
        counts = [0] * len(hosts)
        if len(hosts) > size:
            self.log.error("maglev: {n} hosts do not fit a table of {size} entries (raise lb_config.table_size): "
                           "no host will be chosen", n=len(hosts), size=size)
        elif hosts:
            self.entries = _maglevTable(hosts, size, counts)
        if options.stats is not None:
            stats = options.stats
            stats.gauge("maglev_lb_min_entries_per_host",
                        help="Fewest Maglev table entries of one host.").value = min(counts, default=0)
            stats.gauge("maglev_lb_max_entries_per_host",
                        help="Most Maglev table entries of one host.").value = max(counts, default=0)

    def _start(self, key):
        return key % self.tableSize


def _maglevTable(hosts, size, counts):
    """The Maglev lookup table (host indexes) for ``hosts`` (at most ``size`` of them); fills ``counts``."""
    n = len(hosts)
    shares = _normalizedWeights(hosts)
    most = max(shares)
    offsets = []
    skips = []
    for h in hosts:
        address = h.address.encode("ascii", "replace")
        offsets.append(hash64(address, b"maglev-offset") % size)
        skips.append(hash64(address, b"maglev-skip") % (size - 1) + 1)
    position = offsets  # each host's next candidate entry (its permutation walked as it goes)
    targets = [0.0] * n
    table = [-1] * size
    filled = 0
    rounds = 0
    while filled < size:
        rounds += 1
        for i in range(n):
            if rounds * shares[i] < targets[i]:
                continue
            targets[i] += most
            c = position[i]
            skip = skips[i]
            while table[c] >= 0:
                c += skip
                if c >= size:
                    c -= size
            table[c] = i
            c += skip
            position[i] = c - size if c >= size else c
            counts[i] += 1
            filled += 1
            if filled == size:
                break
    return table
