"""Rate limiting: GCRA per client key, local per worker, or shared through Redis.

Built once per snapshot (routing.py): a proxy host with a `rate_limit`, or with a location
that has one, gets a `RouteLimits` (`route.rate_limit`); any other host has None and pays
nothing per request. `RouteLimits.for_path(target)` gives the `RateLimit` of the longest
matching location prefix that sets its own limit, else the host's (None: not limited).
A location without `rate_limit` inherits the host's limit AND its bucket; a location with
its own limit has its own buckets (scope `<host id>:<location path>`).

The algorithm is GCRA (the generic cell rate algorithm, a token bucket kept as one number,
the "theoretical arrival time" TAT), in integer microseconds so the local and the Lua
computations agree exactly:

    interval = per / requests            (the sustained spacing of requests)
    window   = interval * (requests + burst)
    tat      = max(stored tat, now) + interval
    allowed  iff tat - now <= window     (then store tat; else store nothing)

From an idle key, `requests + burst` requests pass at once, then one per `interval`. A
refused request does not consume anything. The key is the client's address (the real one:
`access.client_address`, X-Forwarded-For only through trusted proxies), or with
`key: "header:<Name>"` the value of that header (an API key; hashed with BLAKE2b in Redis
key names so no API key is sent to Redis in clear). A request WITHOUT that header is limited by its address
instead (its bucket is the address's, in the same scope).

A refused request is answered 429 with `Retry-After` (whole seconds, rounded up) and the
fields of draft-ietf-httpapi-ratelimit-headers-09 (RateLimit header fields for HTTP, March
2025) in their structured-field form:

    RateLimit-Policy: "gatehouse";q=<requests>;w=<per seconds>
    RateLimit: "gatehouse";r=<remaining>;t=<seconds until a request is allowed>

It never reaches an upstream (the gate stage runs before any connect). Allowed responses
carry no RateLimit fields (that would cost a header edit on every proxied response).

State (`Limiter`, one per engine worker, shared by the HTTP and HTTPS factories, kept across
snapshots):

- Local (`LocalBuckets`): a dict key -> TAT in LRU order, bounded (`max_keys`, oldest
  dropped) and expired lazily (a key whose TAT has passed is in the same state as a new key,
  so every 16 inserts up to 32 such keys are dropped from the old end). Clock injected.
- Redis, when the engine has a Redis URL: ONE Lua script per decision (EVALSHA, EVAL after
  NOSCRIPT), computing GCRA with Redis `TIME` so engines with skewed clocks agree, storing
  the TAT with a PX expiry equal to its lifetime. The client is a small Twisted protocol
  speaking RESP2 (`RespProtocol`: AUTH, SELECT, EVALSHA, EVAL, pipelined, replies in order)
  rather than a dependency: txredisapi would bring a large API (and its own reconnection and
  connection-pool policy) for four commands, and redis-py is blocking. The URL may carry a
  user/password and a db number (redis://[user]:password@host:port/db); other schemes
(rediss://, unix://) are not supported: the limits then stay local (logged at start). A decision through
  Redis is asynchronous: `check` returns PENDING and calls `resume(decision)` later on the
  reactor thread. While Redis is unreachable (not connected, a reply slower than
  `reply_timeout`, an error reply) decisions are local; that is logged once per outage, and
  the connection is retried with exponential backoff (0.5 s .. 30 s).
"""
import hashlib
import ipaddress
import logging
import time
from collections import OrderedDict, deque
from urllib.parse import unquote, urlsplit

from twisted.internet.protocol import ClientFactory, Protocol

from proxy_engine.access import client_address

log = logging.getLogger(__name__)

PENDING = -1
MAX_KEYS = 100_000
POLICY = "gatehouse"
REDIS_PREFIX = "gatehouse:rl:"
_US = 1_000_000

LUA = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
tat = tat + interval
local ahead = tat - now
if ahead > window then
  return {0, ahead}
end
redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil(ahead / 1000))
return {1, ahead}
"""
LUA_SHA = hashlib.sha1(LUA.encode()).hexdigest()


class Decision:
    """A refusal: `allowed` False, and the answer's header fields. (An allowed request gets
    the shared `ALLOWED`.)"""
    __slots__ = ("retry_after", "limit")
    allowed = False
    remaining = 0

    def __init__(self, ahead, limit):
        self.limit = limit
        self.retry_after = max(1, -(-(ahead - limit.window) // _US))   # whole seconds, rounded up

    def fields(self):
        """The 429's extra header fields as (lower-case name, value) byte pairs."""
        return ((b"retry-after", b"%d" % self.retry_after),
                (b"ratelimit-policy", self.limit.policy),
                (b"ratelimit", b'"%s";r=0;t=%d' % (POLICY.encode(), self.retry_after)))

    def lines(self):
        """The same fields as HTTP/1.1 header lines."""
        return b"Retry-After: %d\r\nRateLimit-Policy: %s\r\nRateLimit: \"%s\";r=0;t=%d\r\n" % (
            self.retry_after, self.limit.policy, POLICY.encode(), self.retry_after)


class _Allowed:
    __slots__ = ()
    allowed = True


ALLOWED = _Allowed()


class LocalBuckets:
    """GCRA state of one worker: key -> TAT (integer microseconds), LRU order, bounded."""

    def __init__(self, clock, max_keys=MAX_KEYS):
        self.clock = clock                # () -> seconds (reactor.seconds)
        self.max_keys = max_keys
        self.tats = OrderedDict()
        self.inserts = 0

    def decide(self, key, interval, window):
        """(allowed, ahead): `ahead` is how far the new TAT is ahead of now, in microseconds."""
        now = int(self.clock() * _US)
        tats = self.tats
        tat = tats.get(key, now)
        if tat < now:
            tat = now
        tat += interval
        ahead = tat - now
        if ahead > window:
            return False, ahead
        tats[key] = tat
        tats.move_to_end(key)
        self.inserts += 1
        if not self.inserts & 15 or len(tats) > self.max_keys:
            self._sweep(now)
        return True, ahead

    def _sweep(self, now):
        """Drop the oldest keys over the cap, then up to 32 idle keys (TAT passed: the same
        state as an unknown key) from the old end; runs every 16 inserts, so it shrinks."""
        tats = self.tats
        while len(tats) > self.max_keys:
            tats.popitem(last=False)
        for _ in range(32):
            oldest = next(iter(tats))
            if tats[oldest] > now:       # the key just inserted always stops it
                break
            del tats[oldest]


class RateLimit:
    """One limit (a host's or a location's own) in one snapshot."""
    __slots__ = ("scope", "requests", "per", "interval", "window", "header", "policy", "limiter", "trusts")

    def __init__(self, config, scope, limiter, trusts):
        self.scope = scope
        self.requests = config.requests
        self.per = config.per
        self.interval = max(1, round(config.per * _US / config.requests))
        self.window = self.interval * (config.requests + config.burst)
        self.header = config.key[7:].lower().encode("ascii") if config.key.startswith("header:") else None
        self.policy = b'"%s";q=%d;w=%d' % (POLICY.encode(), config.requests, max(1, round(config.per)))
        self.limiter = limiter
        self.trusts = trusts

    def key(self, peer, trusted, headers):
        """The bucket key of a request: (scope, b"h", header value) or (scope, b"ip", packed address)."""
        name = self.header
        if name is not None:
            for lname, _, value in headers:
                if lname == name:
                    return (self.scope, b"h", value)
        address = client_address(peer, trusted, headers, self.trusts) if trusted else peer
        return (self.scope, b"ip", address.packed if address is not None else b"")

    def check(self, peer, trusted, headers, resume):
        """A `Decision`, or PENDING and later `resume(decision)` (Redis)."""
        key = self.key(peer, trusted, headers)
        limiter = self.limiter
        redis = limiter.redis
        if redis is not None and redis.ready:
            redis.decide(redis_name(key), self.interval, self.window,
                         lambda result: self._replied(key, result, resume))
            return PENDING
        allowed, ahead = limiter.local.decide(key, self.interval, self.window)
        return ALLOWED if allowed else Decision(ahead, self)

    def _replied(self, key, result, resume):
        if result is None:                # Redis failed meanwhile: decide locally
            result = self.limiter.local.decide(key, self.interval, self.window)
        resume(ALLOWED if result[0] else Decision(result[1], self))


def redis_name(key):
    """The Redis key (after the prefix) of a bucket key: `<scope>:ip:<address>` or
    `<scope>:h:<BLAKE2b of the header value>` (no API key is sent to Redis in clear)."""
    scope, kind, value = key
    if kind == b"h":
        return "%s:h:%s" % (scope, hashlib.blake2b(value, digest_size=12).hexdigest())
    return "%s:ip:%s" % (scope, ipaddress.ip_address(value) if value else "-")


class RouteLimits:
    """A host's limits: its own (or None) and its locations' own, longest prefix first."""
    __slots__ = ("default", "locations")

    def __init__(self, default, locations):
        self.default = default
        self.locations = locations

    def for_path(self, target):
        """The RateLimit for a request target (origin or absolute form), or None."""
        if target[:1] != b"/":
            scheme = target.find(b"://")
            slash = target.find(b"/", scheme + 3) if scheme >= 0 else -1
            target = target[slash:] if slash >= 0 else b"/"
        for prefix, limit in self.locations:
            if target.startswith(prefix):
                return limit
        return self.default


def build_route_limits(host, limiter, trusts):
    """`RouteLimits` for a snapshot.ProxyHost, or None when nothing of it is limited."""
    default = RateLimit(host.rate_limit, str(host.id), limiter, trusts) if host.rate_limit is not None else None
    # A location overriding the limit gets its own scope; one inheriting (None) falls back to
    # the host's, so its prefix must still shadow a shorter prefix that has its own limit.
    locations = []
    for loc in host.locations:
        if loc.rate_limit is not None:
            locations.append((loc.path.encode("ascii"), RateLimit(loc.rate_limit, f"{host.id}:{loc.path}", limiter,
                                                                  trusts)))
        elif any(other.rate_limit is not None and loc.path.startswith(other.path) and loc.path != other.path
                 for other in host.locations):
            locations.append((loc.path.encode("ascii"), default))
    if default is None and not locations:
        return None
    locations.sort(key=lambda item: len(item[0]), reverse=True)
    return RouteLimits(default, tuple(locations))


class Limiter:
    """One per engine worker: the local buckets, and the Redis client when there is a URL."""

    def __init__(self, reactor=None, redis_url=None, max_keys=MAX_KEYS, prefix=REDIS_PREFIX, reply_timeout=0.5):
        self.reactor = reactor
        self.local = LocalBuckets(reactor.seconds if reactor is not None else time.monotonic, max_keys)
        self.redis = None
        if redis_url:
            scheme = urlsplit(redis_url).scheme
            if scheme == "redis":
                self.redis = RedisGcra(reactor, redis_url, prefix, reply_timeout)
            else:                         # never the URL itself: it may carry a password
                log.warning("rate limit: a %s:// Redis URL is not supported (only redis://): "
                            "limits are kept in each engine worker", scheme)

    def start(self):
        if self.redis is not None:
            self.redis.start()

    def stop(self):
        if self.redis is not None:
            self.redis.stop()


# -- Redis (RESP2 over a Twisted protocol) ---------------------------------------------------

class RedisError(Exception):
    pass


class _Incomplete(Exception):
    pass


def encode_command(*args):
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode("utf-8")
        elif isinstance(arg, int):
            arg = b"%d" % arg
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


def parse_reply(buf, pos=0):
    """(value, next position) of the RESP2 reply at `pos`; raises _Incomplete. Error replies
    are returned as RedisError instances."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete()
    kind, line = buf[pos:pos + 1], buf[pos + 1:end]
    pos = end + 2
    if kind == b"+":
        return line, pos
    if kind == b"-":
        return RedisError(line.decode("utf-8", "replace")), pos
    if kind == b":":
        return int(line), pos
    if kind == b"$":
        size = int(line)
        if size < 0:
            return None, pos
        if len(buf) < pos + size + 2:
            raise _Incomplete()
        return buf[pos:pos + size], pos + size + 2
    if kind == b"*":
        count = int(line)
        if count < 0:
            return None, pos
        items = []
        for _ in range(count):
            item, pos = parse_reply(buf, pos)
            items.append(item)
        return items, pos
    raise RedisError(f"unexpected RESP type {kind!r}")


class RespProtocol(Protocol):
    """Pipelined RESP2 commands; each reply goes to the callback queued with its command."""

    def __init__(self):
        self.buffer = b""
        self.waiting = deque()            # (callback, sent at) in order
        self.refused = False              # the handshake (AUTH, SELECT) failed

    def connectionMade(self):
        self.factory.client.connected(self)

    def call(self, callback, *args):
        self.waiting.append((callback, self.factory.client.reactor.seconds()))
        self.transport.write(encode_command(*args))

    def dataReceived(self, data):
        buf = self.buffer + data
        pos = 0
        replies = []
        try:
            while pos < len(buf):
                value, pos = parse_reply(buf, pos)
                replies.append(value)
        except _Incomplete:
            pass
        except (RedisError, ValueError) as exc:
            log.warning("rate limit: bad reply from Redis (%s): dropping the connection", exc)
            self.transport.abortConnection()
            return
        self.buffer = buf[pos:]
        for value in replies:
            if not self.waiting:
                log.warning("rate limit: an unexpected reply from Redis: dropping the connection")
                self.transport.abortConnection()
                return
            callback, _ = self.waiting.popleft()
            try:
                callback(value)
            except Exception:
                log.exception("rate limit: handling a Redis reply failed")

    def connectionLost(self, reason=None):
        waiting, self.waiting = self.waiting, deque()
        for callback, _ in waiting:
            try:
                callback(RedisError("connection lost"))
            except Exception:
                log.exception("rate limit: handling a lost Redis reply failed")
        self.factory.client.lost(self)


class _RespFactory(ClientFactory):
    protocol = RespProtocol

    def __init__(self, client):
        self.client = client

    def clientConnectionFailed(self, connector, reason):
        self.client.lost(None)


class RedisGcra:
    """The shared GCRA through Redis (see the module doc): connects, authenticates, selects
    the db, then answers `decide` calls; `ready` is False while there is no usable connection."""

    def __init__(self, reactor, url, prefix=REDIS_PREFIX, reply_timeout=0.5):
        self.reactor = reactor
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 6379
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        path = parts.path.strip("/")
        self.db = int(path) if path.isdigit() else 0
        self.prefix = prefix
        self.reply_timeout = reply_timeout
        self.proto = None
        self.ready = False
        self.stopped = True
        self.outage = False               # logged once per outage
        self.backoff = 0.5
        self.retry = None
        self.watchdog = None

    def __repr__(self):                   # never the password
        return f"RedisGcra({self.host}:{self.port}/{self.db})"

    def start(self):
        self.stopped = False
        self._connect()

    def stop(self):
        self.stopped = True
        if self.retry is not None and self.retry.active():
            self.retry.cancel()
        if self.watchdog is not None and self.watchdog.active():
            self.watchdog.cancel()
        if self.proto is not None:
            self.proto.transport.loseConnection()

    def _connect(self):
        self.retry = None
        if not self.stopped:
            self.reactor.connectTCP(self.host, self.port, _RespFactory(self), timeout=3)

    def connected(self, proto):
        self.proto = proto
        if self.password is not None:
            args = ("AUTH", self.username, self.password) if self.username else ("AUTH", self.password)
            proto.call(self._handshake, *args)
        if self.db:
            proto.call(self._handshake, "SELECT", self.db)
        proto.call(self._handshake_done, "PING")

    def _handshake(self, reply):
        proto = self.proto
        if isinstance(reply, RedisError) and proto is not None and not proto.refused:
            proto.refused = True          # the replies already read must not make it ready
            self._down(f"Redis refused the handshake ({reply})")
            proto.transport.abortConnection()

    def _handshake_done(self, reply):
        if isinstance(reply, RedisError) or self.proto is None or self.proto.refused:
            return
        self.ready = True
        self.backoff = 0.5
        if self.outage:
            log.warning("rate limit: Redis at %s:%s is back: limits are shared again", self.host, self.port)
            self.outage = False

    def lost(self, proto):
        if proto is not None and proto is not self.proto:
            return
        self.proto = None
        self.ready = False
        if self.watchdog is not None and self.watchdog.active():
            self.watchdog.cancel()
        if self.stopped:
            return
        self._down("Redis is unreachable")
        if self.retry is None:
            self.retry = self.reactor.callLater(self.backoff, self._connect)
            self.backoff = min(self.backoff * 2, 30.0)

    def _down(self, why):
        if not self.outage:
            self.outage = True
            log.warning("rate limit: %s at %s:%s: limiting locally in each engine worker until it is back",
                        why, self.host, self.port)

    def decide(self, key, interval, window, callback):
        """Calls `callback((allowed, ahead))`, or `callback(None)` when Redis failed."""
        proto = self.proto
        full = self.prefix + key

        def replied(reply):
            if isinstance(reply, RedisError) and str(reply).startswith("NOSCRIPT") and self.proto is proto:
                proto.call(finish, "EVAL", LUA, 1, full, interval, window)
                return
            finish(reply)

        def finish(reply):
            if isinstance(reply, list) and len(reply) == 2:
                callback((reply[0] == 1, reply[1]))
            else:
                if isinstance(reply, RedisError) and str(reply) != "connection lost":
                    self._down(f"Redis answered an error ({reply})")
                callback(None)

        proto.call(replied, "EVALSHA", LUA_SHA, 1, full, interval, window)
        if self.watchdog is None or not self.watchdog.active():
            self.watchdog = self.reactor.callLater(self.reply_timeout, self._check_replies)

    def _check_replies(self):
        """A reply slower than `reply_timeout` means Redis is unusable: drop the connection
        (the waiting requests are then decided locally) and reconnect."""
        proto = self.proto
        if proto is None or not proto.waiting:
            return
        oldest = proto.waiting[0][1]
        now = self.reactor.seconds()
        if now - oldest >= self.reply_timeout:
            self._down("Redis did not answer in time")
            proto.transport.abortConnection()
            return
        self.watchdog = self.reactor.callLater(self.reply_timeout - (now - oldest), self._check_replies)
