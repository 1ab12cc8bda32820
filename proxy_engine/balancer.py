"""Upstream selection: one small type per policy.

`UpstreamGroup` is built once per snapshot for each host and each location that has its
own upstreams. Its only state is a cursor into a precomputed cycle, so picking costs one
index and one modulo. Policies other than round robin (least_conn, ip_hash, random, first)
fall back to weighted round robin for now; they will ask `upstream.available()` once
health checks exist, never health internals.
"""


def smooth_weighted_cycle(upstreams):
    """nginx's smooth weighted round robin unrolled into one cycle (a,b,b -> b,a,b)."""
    weights = [u.weight for u in upstreams]
    total = sum(weights)
    current = [0] * len(upstreams)
    cycle = []
    for _ in range(total):
        for i, w in enumerate(weights):
            current[i] += w
        best = max(range(len(upstreams)), key=current.__getitem__)
        current[best] -= total
        cycle.append(upstreams[best])
    return tuple(cycle)


class UpstreamGroup:
    __slots__ = ("upstreams", "_cycle", "_size", "_cursor")

    def __init__(self, upstreams):
        self.upstreams = tuple(upstreams)
        self._cycle = smooth_weighted_cycle(self.upstreams)
        self._size = len(self._cycle)
        self._cursor = -1

    def pick(self):
        self._cursor = cursor = (self._cursor + 1) % self._size
        return self._cycle[cursor]
