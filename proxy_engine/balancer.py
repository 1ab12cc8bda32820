"""Upstream selection: load-balancing policies, health-aware skipping, sticky sessions, retries.

Groups are built once per snapshot for each host and each location that has its own
upstreams (`build_group`). Two kinds:

- `UpstreamGroup`: weighted round robin without health checks or sticky sessions (the
  default). Its only state is a cursor into a precomputed cycle, so `pick()` costs one
  index and one modulo. A request on such a group never looks at health.
- `BalancedGroup`: any other policy, or any host with active/passive health checks or a
  sticky cookie. `choose(key, token, tried)` returns an available upstream or None (every
  upstream is down or already tried: the caller answers 502 "no healthy upstream").

Policies (all weighted, all skip upstreams whose `HealthState.up` is False and those in
`tried`):

- round_robin: nginx's smooth weighted cycle; unavailable entries are stepped over;
- least_conn: fewest in-flight requests per weight (`in_flight / weight`, compared by
  cross-multiplying); ties go to the next one after the last pick, so equal loads rotate.
  In-flight counts live in the `HealthRegistry` keyed by address (they survive snapshot
  swaps and are shared by the http and https listeners): +1 on `acquire`, -1 on `release`
  when the exchange ends;
- ip_hash: weighted rendezvous hashing (HRW, logarithmic method: score = weight / -ln(u)
  with u = blake2b(client address, upstream) in (0, 1)): the same client goes to the same
  upstream in every worker, and losing one upstream moves only its clients;
- random: weighted, with an injectable `random.Random` (tests seed it);
- first: the first available upstream in configured order (failover).

Sticky sessions (`sticky`): the cookie value is an opaque token per upstream, the first 16
hex digits of blake2b(address, key = a salt derived from the host id and cookie name). It is
the same in every worker and across reloads (a client stays pinned through a reload), never
shows the raw address, but is not a secret MAC: someone who can enumerate candidate
addresses can recognise one. A valid token naming an available upstream pins the request
to it; an unknown token or one naming a down or tried upstream falls back to the policy,
and a `Set-Cookie` is sent whenever the client's token differs from its upstream's.

Retry (`retryable`): a request whose connection attempt failed (refused, unreachable,
connect timeout, TLS handshake failed before any response byte) is tried again on another
upstream of the same group when it is idempotent and no body byte has been forwarded; each
upstream at most once per request. The failure is reported to passive health first.
"""
import hashlib
import math
import random as _random

from proxy_engine.access import client_address
from proxy_engine.errors import UpstreamFailure

ROUND_ROBIN, LEAST_CONN, IP_HASH, RANDOM, FIRST = "round_robin", "least_conn", "ip_hash", "random", "first"
_IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"))
_TWO64 = float(1 << 64)


class NoHealthyUpstream(UpstreamFailure):
    """Every upstream of the group is marked down (or was tried already)."""
    cause = "no healthy upstream"


def smooth_weighted_cycle(upstreams):
    """nginx's smooth weighted round robin unrolled into one cycle (a,b,b -> b,a,b)."""
    return tuple(upstreams[i] for i in _smooth_indices([u.weight for u in upstreams]))


def _smooth_indices(weights):
    total = sum(weights)
    current = [0] * len(weights)
    cycle = []
    for _ in range(total):
        for i, w in enumerate(weights):
            current[i] += w
        best = max(range(len(weights)), key=current.__getitem__)
        current[best] -= total
        cycle.append(best)
    return cycle


class UpstreamGroup:
    """Weighted round robin, no health, no stickiness: the cheapest pick."""

    __slots__ = ("upstreams", "_cycle", "_size", "_cursor")
    balanced = False
    counts = False

    def __init__(self, upstreams):
        self.upstreams = tuple(upstreams)
        self._cycle = smooth_weighted_cycle(self.upstreams)
        self._size = len(self._cycle)
        self._cursor = -1

    def pick(self):
        self._cursor = cursor = (self._cursor + 1) % self._size
        return self._cycle[cursor]

    def next_untried(self, tried):
        """Another upstream not in `tried` (addresses), or None: the retry of a connect failure."""
        for _ in range(self._size):
            upstream = self.pick()
            if upstream.address not in tried:
                return upstream
        return None

    def failed(self, upstream, failure):
        """No passive health on a plain group."""

    def acquire(self, upstream):
        pass

    def release(self, upstream):
        pass


def sticky_token(salt, upstream):
    """The opaque cookie value naming `upstream` (bytes, 16 hex digits)."""
    return hashlib.blake2b(repr(upstream.address).encode("utf-8"), digest_size=8, key=salt).hexdigest().encode("ascii")


def sticky_salt(host_id, cookie):
    return hashlib.blake2b(f"gatehouse-sticky:{host_id}:{cookie}".encode("utf-8"), digest_size=16).digest()


def cookie_value(headers, name):
    """The value of cookie `name` (bytes) in request header triples, or None."""
    prefix = name + b"="
    for lname, _, value in headers:
        if lname == b"cookie":
            for part in value.split(b";"):
                part = part.strip()
                if part.startswith(prefix):
                    return part[len(prefix):].strip(b'"')
    return None


class BalancedGroup:
    """Any policy, health-aware, optionally sticky (see the module docstring)."""

    __slots__ = ("upstreams", "_addresses", "states", "policy", "counts", "weights", "_cycle", "_size", "_cursor", "_rng",
                 "_inflight", "_hash_keys", "cookie", "_tokens", "_by_token", "_cookie_tail")
    balanced = True

    def __init__(self, upstreams, policy=ROUND_ROBIN, states=None, inflight=None, sticky=None, host_id=0, rng=None):
        self.upstreams = tuple(upstreams)
        self._addresses = tuple(u.address for u in self.upstreams)
        self.states = tuple(states) if states is not None else (None,) * len(self.upstreams)
        self.policy = policy
        self.counts = policy == LEAST_CONN     # exchanges must `release` (in-flight counting)
        self.weights = tuple(u.weight for u in self.upstreams)
        self._cycle = tuple(_smooth_indices(list(self.weights)))
        self._size = len(self._cycle)
        self._cursor = -1
        self._rng = rng if rng is not None else _random.Random()
        self._inflight = inflight if inflight is not None else {}
        self._hash_keys = tuple(hashlib.blake2b(repr(u.address).encode("utf-8")).digest() for u in self.upstreams)
        self.cookie = None
        self._tokens = self._by_token = None
        self._cookie_tail = b""
        if sticky is not None:
            self.cookie = sticky.cookie.encode("ascii")
            salt = sticky_salt(host_id, sticky.cookie)
            self._tokens = tuple(sticky_token(salt, u) for u in self.upstreams)
            self._by_token = {token: i for i, token in enumerate(self._tokens)}
            tail = b"; Path=/; HttpOnly; SameSite=Lax"
            if sticky.max_age > 0:
                tail += b"; Max-Age=%d" % int(sticky.max_age)
            self._cookie_tail = tail

    # -- availability ---------------------------------------------------------------------

    def _available(self, i, tried):
        state = self.states[i]
        return (state is None or state.up) and (not tried or self.upstreams[i].address not in tried)

    def available(self):
        """The upstreams not marked down (for tests and reports)."""
        return [u for i, u in enumerate(self.upstreams) if self._available(i, ())]

    # -- selection ----------------------------------------------------------------------

    def pick(self):
        """The policy's choice with no client key, no cookie, nothing tried (None if all down)."""
        return self.choose()

    def choose(self, key=None, token=None, tried=()):
        """An available upstream (not in `tried`, a set of addresses), or None.

        `key` is the client's address as bytes (ip_hash), `token` the sticky cookie's value."""
        if token is not None and self._by_token is not None:
            i = self._by_token.get(token)
            if i is not None and self._available(i, tried):
                return self.upstreams[i]
        i = self._index(key, tried)
        return None if i is None else self.upstreams[i]

    def _index(self, key, tried, policy=None):
        policy = policy or self.policy
        n = len(self.upstreams)
        if policy == ROUND_ROBIN:
            cycle, size = self._cycle, self._size
            cursor = self._cursor
            for _ in range(size):
                cursor = (cursor + 1) % size
                i = cycle[cursor]
                if self._available(i, tried):
                    self._cursor = cursor
                    return i
            return None
        if policy == FIRST:
            for i in range(n):
                if self._available(i, tried):
                    return i
            return None
        states = self.states
        if tried:
            candidates = [i for i in range(n) if self._available(i, tried)]
        else:
            candidates = [i for i, state in enumerate(states) if state is None or state.up]
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0]
        if policy == LEAST_CONN:
            inflight = self._inflight
            weights = self.weights
            addresses = self._addresses
            count = len(candidates)
            self._cursor = start = (self._cursor + 1) % count      # ties rotate
            best = None
            best_load = best_weight = 0
            for offset in range(count):
                i = candidates[(start + offset) % count]
                load = inflight.get(addresses[i], 0)
                if best is None or load * best_weight < best_load * weights[i]:
                    best, best_load, best_weight = i, load, weights[i]
            return best
        if policy == IP_HASH:
            if key is None:
                key = b""
            best = None
            best_score = -1.0
            for i in candidates:
                digest = hashlib.blake2b(key, digest_size=8, key=self._hash_keys[i]).digest()
                u = (int.from_bytes(digest, "big") + 0.5) / _TWO64        # in (0, 1)
                score = self.weights[i] / -math.log(u)
                if score > best_score:
                    best, best_score = i, score
            return best
        # RANDOM
        total = sum(self.weights[i] for i in candidates)
        point = self._rng.random() * total
        for i in candidates:
            point -= self.weights[i]
            if point < 0:
                return i
        return candidates[-1]

    def next_untried(self, tried):
        """Another available upstream not in `tried`, or None (the retry of a connect failure;
        ip_hash retries spread by weighted round robin instead of all going to one fallback)."""
        i = self._index(None, tried, ROUND_ROBIN if self.policy == IP_HASH else None)
        return None if i is None else self.upstreams[i]

    # -- sticky sessions ----------------------------------------------------------------

    def set_cookie(self, upstream, token):
        """The Set-Cookie header line pinning the client to `upstream`, or b"" when the
        group is not sticky or the client's `token` already names it."""
        if self._tokens is None:
            return b""
        mine = self._tokens[self.upstreams.index(upstream)]
        if mine == token:
            return b""
        return b"Set-Cookie: %s=%s%s\r\n" % (self.cookie, mine, self._cookie_tail)

    # -- exchange bookkeeping -----------------------------------------------------------

    def acquire(self, upstream):
        """An exchange starts on `upstream` (in-flight count for least_conn)."""
        if self.policy == LEAST_CONN:
            inflight = self._inflight
            address = upstream.address
            inflight[address] = inflight.get(address, 0) + 1

    def release(self, upstream):
        """The exchange on `upstream` ended (answered, failed or abandoned)."""
        if self.policy == LEAST_CONN:
            inflight = self._inflight
            address = upstream.address
            count = inflight.get(address, 0) - 1
            if count > 0:
                inflight[address] = count
            else:
                inflight.pop(address, None)

    def failed(self, upstream, failure):
        """An exchange with `upstream` failed in a way that is the upstream's fault: passive health."""
        try:
            state = self.states[self.upstreams.index(upstream)]
        except ValueError:
            return
        if state is not None:
            state.exchange_failed(failure)


def build_group(host, upstreams, registry=None, rng=None):
    """The group for `upstreams` (the host's or a location's) under `host`'s load balancing."""
    if (host.policy == ROUND_ROBIN and host.health_check is None and getattr(host, "passive", None) is None
            and getattr(host, "sticky", None) is None):
        return UpstreamGroup(upstreams)
    states = None
    inflight = None
    if registry is not None:
        inflight = registry.inflight
        if host.health_check is not None or host.passive is not None:
            states = [registry.state(u, host.health_check, host.passive) for u in upstreams]
    return BalancedGroup(upstreams, host.policy, states, inflight, host.sticky, host.id, rng)


def retryable(method, body_bytes):
    """Whether a request whose connection attempt failed may go to another upstream."""
    return body_bytes == 0 and method in _IDEMPOTENT


def client_key(peer, client_ip):
    """The ip_hash key: the packed client address (bytes), or the textual IP."""
    return peer.packed if peer is not None else client_ip


# -- the exchange side: what `_connect` and `upstream_connect_failed` call (both protocols) --

def choose_for(group, headers, peer, client_ip, trusted, trusts, tried=()):
    """(upstream or None, Set-Cookie line or b"") for a request on a `BalancedGroup`.

    `headers` are the request's triples (the sticky cookie; X-Forwarded-For for ip_hash
    through trusted proxies), `peer` / `client_ip` the connection's address (parsed / bytes),
    `trusted` whether the peer is a trusted proxy, `trusts` the router's test for one."""
    token = cookie_value(headers, group.cookie) if group.cookie is not None else None
    key = None
    if group.policy == IP_HASH:
        address = client_address(peer, trusted, headers, trusts)
        key = address.packed if address is not None else client_ip
    upstream = group.choose(key, token, tried)
    if upstream is None:
        return None, b""
    group.acquire(upstream)
    return upstream, group.set_cookie(upstream, token)


def retry_for(group, upstream, headers, tried):
    """After a failed connection attempt to `upstream`: (another upstream or None, Set-Cookie
    line). `tried` (a set of addresses) gains `upstream`; the in-flight count moves along."""
    tried.add(upstream.address)
    following = group.next_untried(tried)
    if following is None:
        return None, b""
    group.release(upstream)
    group.acquire(following)
    token = cookie_value(headers, group.cookie) if getattr(group, "cookie", None) is not None else None
    return following, (group.set_cookie(following, token) if group.balanced else b"")


def retry_request(request, failure, closed=False):
    """A connection attempt of `request` (an exchange of either protocol) failed: the group's
    health learns of it. When the request may go elsewhere (idempotent, no body sent, nothing
    answered yet, and not `closed`: the client connection is still open), `request.upstream`
    becomes another upstream of its group (its Set-Cookie line noted) and is returned; else
    None (retry_for)."""
    group = request.group
    group.failed(request.upstream, failure)
    if request.responded or closed or not retryable(request.method, request.body_bytes):
        return None
    if request.tried is None:
        request.tried = set()
    upstream, cookie = retry_for(group, request.upstream, request.headers, request.tried)
    if upstream is None:
        return None
    request.upstream = upstream
    if cookie:
        request.set_cookie = cookie
    return upstream
