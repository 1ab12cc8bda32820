"""Response caching (like nginx proxy_cache): RFC 9111 for a shared cache, per worker process.

Objects and their lifetimes:

- `ResponseCache`: one per worker process (both listeners' factories share it; N workers =
  N independent caches). Entries in memory are bounded in bytes (`settings.cache.memory_bytes`)
  in an `OrderedDict` used as an LRU (least recently used out first). With a disk tier
  (`disk_bytes > 0`) what memory evicts, and responses too big for memory, are written to
  files under `cache_dir/<pid>-<n>/`, bounded in bytes by their own LRU, and read back on a hit.
  Every file operation runs in the reactor's thread pool (`run_in_thread`, injectable as in
  `proxy_engine.access`). The disk tier survives nothing: a worker's directory is its own,
  and the directories of workers that are gone are removed at start (a restart clears it).
- `CachePolicy`: built with the routes of each snapshot (`ResponseCache.swap`), set as
  `ProxyRoute.cache` only for a host with caching enabled at the host or at a location; a
  route without it pays one attribute check per request.
- `CacheTap`: one per request on a cache-enabled location. It decides (lookup) and then sits
  between the upstream connection and the exchange (`ProxyProtocol` / `H2Stream`): the
  connection talks to the tap (`upstream_head` / `upstream_body` / `upstream_done` /
  `upstream_failed`), which copies what it must store and forwards everything to the exchange.
  A hit is a `CachedResponse` that quacks like `upstream.UpstreamConnection` (status, reason,
  headers, content_length, state CLOSED, a no-op transport) replayed into the exchange with the
  same three calls, so the exchange's response path (header rules, HSTS, X-Request-Id,
  compression, access log) treats hits like upstream answers.

Tap states (`CacheTap.state`): LOOKUP (deciding; WAIT while a collapsed miss or a disk read
runs) -> SERVED (answered from the cache) | FORWARD (upstream request; storing when the
response turns out storable) -> DONE.

Key: (host id, cache_generation, scheme, method normalised (HEAD = GET), Host lower-case,
target) and, per key, the values of the request headers the response's Vary names. The
scheme is in the key so an upstream redirecting http -> https is never replayed on https.

RFC 9111 as implemented: only GET and HEAD (HEAD answered from GET entries; a HEAD miss is
forwarded and never stored); statuses 200 203 204 300 301 308 404 405 410 414 501 are
cacheable with `default_ttl` when the response gives no freshness, others only with explicit
freshness (never 206 or 304); `no-store` (request or response), `private`, `Set-Cookie`,
`Vary: *` are never stored; response `no-cache` is stored and revalidated on every use;
freshness from `s-maxage` (wins), `max-age`, `Expires` - `Date`, then `default_ttl` (0 = not
stored); age from `Age`, `Date` and the request/response times (RFC 9111 4.2.3); request
`no-cache`, `Pragma: no-cache` and `max-age` force revalidation; `must-revalidate`,
`proxy-revalidate`, `no-cache` and `s-maxage` (unless the response names `stale-if-error`)
forbid serving stale. Requests with `Authorization` are served and stored only with a
response that says `public`, `s-maxage` or `must-revalidate`. Unsafe methods (POST, PUT,
DELETE, PATCH) drop the entries of their target. Requests with `Range` bypass the cache.

Revalidation: a stale entry with an ETag / Last-Modified goes upstream with If-None-Match /
If-Modified-Since (the client's own conditionals replaced); 304 refreshes the entry's
headers (RFC 9111 4.3.4) and serves it (REVALIDATED), 200 replaces it (EXPIRED). A client's
own conditional request on a fresh entry is answered 304 by the cache.

Collapsed misses: the first miss of a key (the leader) goes upstream; later ones (followers)
wait until the leader's response is stored (then they are hits) or turns out not storable
(then they all go upstream themselves, without waiting again), or `LOCK_TIMEOUT`.

stale-if-error: when the upstream cannot be reached, resets, times out or answers 500, 502,
503 or 504, a stale entry within the location's `stale_if_error` seconds (or the response's
`stale-if-error=N`) is served (STALE).

X-Cache-Status: HIT | MISS | EXPIRED | REVALIDATED | STALE | BYPASS is added to every
response a cache-enabled location relays or serves (not to the engine's own error pages);
hits carry `Age`. A purge is a higher `cache_generation` for the host: the swap drops the
host's entries of older generations (and those of hosts no longer cached).
"""
import email.utils
import itertools
import logging
import os
import shutil
from collections import OrderedDict
from proxy_engine.headers import response_lines

log = logging.getLogger(__name__)

HIT, MISS, EXPIRED, REVALIDATED, STALE, BYPASS = b"HIT", b"MISS", b"EXPIRED", b"REVALIDATED", b"STALE", b"BYPASS"
LOOKUP, WAIT, SERVED, FORWARD, DONE = "lookup", "wait", "served", "forward", "done"

MEMORY_BYTES = 64 << 20
LOCK_TIMEOUT = 5.0
# Bytes counted per entry besides its body, and per stored header besides its name and value:
# roughly what CPython spends on the entry, its key, the LRU node and each header tuple.
ENTRY_OVERHEAD = 640
HEADER_OVERHEAD = 160
HEURISTIC = frozenset((200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501))
STALE_ON = frozenset((500, 502, 503, 504))
_UNSAFE = frozenset((b"POST", b"PUT", b"DELETE", b"PATCH"))
# Not stored with an entry: hop-by-hop, framing (re-made from the body), and what the cache adds.
_NOT_STORED = frozenset((
    b"connection", b"keep-alive", b"proxy-connection", b"proxy-authorization", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"content-length", b"age", b"x-cache-status",
))
# What a 304 answered by the cache carries (RFC 9110 15.4.5).
_NOT_MODIFIED_KEEP = frozenset((b"etag", b"cache-control", b"expires", b"date", b"vary", b"content-location",
                                b"last-modified"))
_CONDITIONAL = frozenset((b"if-none-match", b"if-modified-since"))
# Request headers that take a request off the fast path of a plain fresh hit.
_SLOW = frozenset((b"cache-control", b"pragma", b"authorization", b"range", b"if-none-match", b"if-modified-since"))
_HIT_LINE = (b"x-cache-status", b"X-Cache-Status", HIT)


# -- pure helpers ---------------------------------------------------------------------------

def parse_cache_control(values):
    """Directives of Cache-Control header values (bytes): {lower name (str): value str or True}."""
    out = {}
    for value in values:
        for part in value.split(b","):
            name, eq, arg = part.partition(b"=")
            name = name.strip().lower()
            if not name:
                continue
            out[name.decode("latin-1")] = arg.strip().strip(b'"').decode("latin-1") if eq else True
    return out


def seconds(directives, name):
    """A delta-seconds directive as an int (None when absent or not a number)."""
    value = directives.get(name)
    if value is None or value is True:
        return None
    try:
        return max(0, int(value))
    except ValueError:
        return None


def http_date(value):
    """An HTTP date (bytes) as Unix seconds, or None."""
    try:
        parsed = email.utils.parsedate_tz(value.decode("latin-1"))
    except (ValueError, UnicodeDecodeError):
        return None
    if parsed is None:
        return None
    try:
        return float(email.utils.mktime_tz(parsed))
    except (OverflowError, ValueError):
        return None


def format_http_date(when):
    return email.utils.formatdate(when, usegmt=True).encode("ascii")


def _values(headers, lname):
    return [v for n, _, v in headers if n == lname]


def _first(headers, lname):
    for n, _, v in headers:
        if n == lname:
            return v
    return None


def secondary_key(names, headers):
    """The request's values of the headers a response's Vary names (a tuple, one item each)."""
    return tuple(b",".join(v.strip() for n, _, v in headers if n == name) for name in names)


def etag_matches(entry_etag, if_none_match):
    """Weak comparison of an If-None-Match value against an ETag (RFC 9110 13.1.2)."""
    if entry_etag is None:
        return False
    if if_none_match.strip() == b"*":
        return True
    bare = entry_etag[2:] if entry_etag.startswith(b"W/") else entry_etag
    for tag in if_none_match.split(b","):
        tag = tag.strip()
        if (tag[2:] if tag.startswith(b"W/") else tag) == bare:
            return True
    return False


class Freshness:
    """What a response's headers say about storing and reusing it (RFC 9111 sections 3, 4.2)."""
    __slots__ = ("storable", "lifetime", "corrected_age", "no_stale", "stale_if_error", "auth_ok", "vary",
                 "etag", "last_modified", "reason")

    def __init__(self):
        self.storable = False
        self.lifetime = 0.0
        self.corrected_age = 0.0
        self.no_stale = False
        self.stale_if_error = 0.0
        self.auth_ok = False
        self.vary = ()
        self.etag = None
        self.last_modified = None
        self.reason = ""


def freshness(status, headers, request_time, response_time, default_ttl, stale_if_error=0.0, authorized=False):
    """Freshness of a response (`headers` are triples) received at `response_time` for a
    request sent at `request_time`; see the module docstring for the rules."""
    f = Freshness()
    cc = parse_cache_control(_values(headers, b"cache-control"))
    if "no-store" in cc or "private" in cc:
        f.reason = "no-store/private"
        return f
    if _first(headers, b"set-cookie") is not None:
        f.reason = "set-cookie"
        return f
    vary = []
    for value in _values(headers, b"vary"):
        for name in value.split(b","):
            name = name.strip().lower()
            if name == b"*":
                f.reason = "vary *"
                return f
            if name and name not in vary:
                vary.append(name)
    f.vary = tuple(vary)
    f.auth_ok = "public" in cc or "s-maxage" in cc or "must-revalidate" in cc
    if authorized and not f.auth_ok:
        f.reason = "authorization"
        return f
    if status == 206 or status == 304 or status < 200:
        f.reason = "status"
        return f
    date = _first(headers, b"date")
    date_value = http_date(date) if date is not None else None
    age = _first(headers, b"age")
    try:
        age_value = max(0, int(age)) if age is not None else 0
    except ValueError:
        age_value = 0
    apparent_age = max(0.0, response_time - date_value) if date_value is not None else 0.0
    f.corrected_age = max(apparent_age, age_value + max(0.0, response_time - request_time))
    s_maxage = seconds(cc, "s-maxage")
    max_age = seconds(cc, "max-age")
    expires = _first(headers, b"expires")
    if s_maxage is not None:
        lifetime = float(s_maxage)
    elif max_age is not None:
        lifetime = float(max_age)
    elif expires is not None:
        expires_value = http_date(expires)
        lifetime = 0.0 if expires_value is None else max(
            0.0, expires_value - (date_value if date_value is not None else response_time))
    elif status in HEURISTIC and default_ttl > 0:
        lifetime = float(default_ttl)
    else:
        f.reason = "no freshness"
        return f
    f.etag = _first(headers, b"etag")
    f.last_modified = _first(headers, b"last-modified")
    no_cache = "no-cache" in cc
    if no_cache:
        lifetime = 0.0
    f.lifetime = lifetime
    directive = seconds(cc, "stale-if-error")
    f.no_stale = (no_cache or "must-revalidate" in cc or "proxy-revalidate" in cc
                  or (s_maxage is not None and directive is None))
    f.stale_if_error = 0.0 if f.no_stale else max(float(stale_if_error), float(directive or 0))
    if lifetime <= f.corrected_age and f.etag is None and f.last_modified is None and not f.stale_if_error:
        f.reason = "stale on arrival"
        return f
    f.storable = True
    return f


def _stored_headers(headers):
    drop = set()
    for n, _, v in headers:
        if n == b"connection":
            drop.update(t.strip().lower() for t in v.split(b","))
    return [h for h in headers if h[0] not in _NOT_STORED and h[0] not in drop]


# -- entries and the replayed response ------------------------------------------------------

class _NullTransport:
    """The transport of a cached response: pairing producers with it is harmless."""
    __slots__ = ()

    def registerProducer(self, producer, streaming):
        pass

    def unregisterProducer(self):
        pass

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass


NULL_TRANSPORT = _NullTransport()


class CachedResponse:
    """A stored response as an `UpstreamConnection` look-alike, replayed into an exchange."""
    __slots__ = ("status", "reason", "headers", "content_length", "state", "transport", "reused", "got_bytes",
                 "exchange", "lines")

    def __init__(self, status, reason, headers, content_length, lines=None):
        self.status = status
        self.reason = reason
        self.headers = headers
        self.lines = lines               # headers.response_lines(headers), for a HIT shared by many requests
        self.content_length = content_length
        self.state = "closed"            # upstream.CLOSED: never released to a pool, never aborted
        self.transport = NULL_TRANSPORT
        self.reused = False
        self.got_bytes = True
        self.exchange = None

    def abort(self):
        pass


class Entry:
    __slots__ = ("key", "host_id", "generation", "status", "reason", "headers", "hit_headers", "body", "length",
                 "size",
                 "response_time", "corrected_age", "lifetime", "no_stale", "stale_if_error", "auth_ok",
                 "etag", "last_modified", "vary", "path", "writing", "doomed", "tier", "hit")

    def __init__(self, key, host_id, generation, status, reason, headers, body, f, response_time):
        self.key = key
        self.host_id = host_id
        self.generation = generation
        self.status = status
        self.reason = reason
        self.set_headers(headers)
        self.body = body
        self.length = len(body)
        self.size = (len(body) + len(key[0][4]) + ENTRY_OVERHEAD
                     + sum(len(n) + len(v) + HEADER_OVERHEAD for _, n, v in headers))
        self.response_time = response_time
        self.path = None                 # the file holding the body (disk tier)
        self.writing = False
        self.doomed = False
        self.tier = None                 # "memory" | "disk" | None (not in the cache)
        self.refresh(f, response_time)

    def set_headers(self, headers):
        self.headers = headers
        self.hit_headers = headers + [_HIT_LINE]
        self.hit = None                  # (age, CachedResponse) of the last HIT: reused within that second

    def refresh(self, f, response_time):
        self.response_time = response_time
        self.corrected_age = f.corrected_age
        self.lifetime = f.lifetime
        self.no_stale = f.no_stale
        self.stale_if_error = f.stale_if_error
        self.auth_ok = f.auth_ok
        self.etag = f.etag
        self.last_modified = f.last_modified
        self.vary = f.vary

    def age(self, now):
        return self.corrected_age + (now - self.response_time)

    def response(self, label, now, not_modified=False):
        seconds = int(self.age(now))
        if label is HIT and not not_modified:
            # Exchanges only read a CachedResponse, so hits within one second of age share one.
            hit = self.hit
            if hit is not None and hit[0] == seconds:
                return hit[1]
            headers = self.hit_headers + [(b"age", b"Age", b"%d" % max(0, seconds))]
            response = CachedResponse(self.status, self.reason, headers, self.length, response_lines(headers))
            self.hit = (seconds, response)
            return response
        age = b"%d" % max(0, seconds)
        extra = [(b"age", b"Age", age), (b"x-cache-status", b"X-Cache-Status", label)]
        if not_modified:
            return CachedResponse(304, b"Not Modified",
                                  [h for h in self.headers if h[0] in _NOT_MODIFIED_KEEP] + extra, None)
        return CachedResponse(self.status, self.reason, self.headers + extra, self.length)


class _Variants:
    __slots__ = ("names", "keys")

    def __init__(self, names):
        self.names = names
        self.keys = set()


class _Lock:
    __slots__ = ("leader", "followers", "timer")

    def __init__(self, leader):
        self.leader = leader
        self.followers = []
        self.timer = None


# -- blocking file operations (only ever run in the thread pool) -----------------------------

def _write_file(path, body):
    tmp = path + ".tmp"
    with open(tmp, "wb") as handle:
        handle.write(body)
    os.replace(tmp, path)


def _read_file(path):
    with open(path, "rb") as handle:
        return handle.read()


def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _prepare_directory(root, mine):
    """Make this worker's directory; remove those of workers that are gone (pid-n names)."""
    os.makedirs(root, exist_ok=True)
    for name in os.listdir(root):
        pid = name.split("-", 1)[0]
        if not pid.isdigit() or name == os.path.basename(mine):
            continue
        try:
            os.kill(int(pid), 0)
            alive = int(pid) != os.getpid()
        except ProcessLookupError:
            alive = False
        except PermissionError:
            alive = True
        if not alive:
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    os.makedirs(mine, exist_ok=True)


_instances = itertools.count()


class ResponseCache:
    """The per-worker store (see the module docstring)."""

    def __init__(self, reactor, memory_bytes=MEMORY_BYTES, disk_bytes=0, directory=None, run_in_thread=None,
                 lock_timeout=LOCK_TIMEOUT):
        self.reactor = reactor
        self.memory_bytes = memory_bytes
        self.disk_bytes = disk_bytes
        self.root = directory
        self.directory = None            # this worker's own directory, made on first use
        self.ready = None                # Deferred of the directory preparation
        self.run_in_thread = run_in_thread
        self.lock_timeout = lock_timeout
        self.memory = OrderedDict()      # (primary, secondary) -> Entry, least recently used first
        self.disk = OrderedDict()
        self.memory_used = 0
        self.disk_used = 0
        self.variants = {}               # primary -> _Variants
        self.locks = {}                  # primary -> _Lock
        self.generations = {}            # host id -> cache_generation being served
        self.files = itertools.count()
        self.queued = None               # disk writes waiting for the directory
        self.stats = {"stored": 0, "evicted": 0, "to_disk": 0, "disk_hits": 0, "purged": 0}

    # -- configuration --------------------------------------------------------------------

    @property
    def max_object(self):
        """The largest response stored: 1/8 of the larger tier."""
        return max(self.memory_bytes, self.disk_bytes if self.root else 0) // 8

    def swap(self, snapshot, router=None, scheme=b"http"):
        """A new snapshot is served: new limits, drop purged and uncached hosts' entries, and
        give each cache-enabled route of `router` its `CachePolicy`."""
        settings = getattr(snapshot.settings, "cache", None)
        if settings is not None:
            self.memory_bytes, self.disk_bytes = settings.memory_bytes, settings.disk_bytes
        generations = {}
        for host in snapshot.proxy_hosts:
            if _enabled(host.cache) or any(_enabled(loc.cache) for loc in host.locations):
                generations[host.id] = host.cache_generation
        self.generations = generations
        for store in (self.memory, self.disk):
            for key, entry in list(store.items()):
                if generations.get(entry.host_id) != entry.generation:
                    self._remove(entry)
                    self.stats["purged"] += 1
        self._shrink()
        if router is not None:
            policies = {}
            for table in (router.exact, router.wildcard):
                for route in table.values():
                    if route.kind != "proxy" or route.host.id not in generations:
                        continue
                    policy = policies.get(id(route))
                    if policy is None:
                        policy = policies[id(route)] = CachePolicy(self, route.host, scheme)
                    route.cache = policy

    # -- lookup and store -----------------------------------------------------------------

    def find(self, primary, headers):
        variants = self.variants.get(primary)
        if variants is None:
            return None
        key = (primary, secondary_key(variants.names, headers) if variants.names else ())
        entry = self.memory.get(key)
        if entry is not None:
            self.memory.move_to_end(key)
            return entry
        entry = self.disk.get(key)
        if entry is not None:
            self.disk.move_to_end(key)
        return entry

    def invalidate(self, primary):
        variants = self.variants.get(primary)
        if variants is not None:
            for secondary in list(variants.keys):
                entry = self.memory.get((primary, secondary)) or self.disk.get((primary, secondary))
                if entry is not None:
                    self._remove(entry)

    def store(self, primary, request_headers, host_id, generation, status, reason, headers, body, f, now):
        """Commit a response; returns the entry or None (too big, purged meanwhile)."""
        if self.generations.get(host_id) != generation or len(body) > self.max_object:
            return None
        variants = self.variants.get(primary)
        if variants is not None and variants.names != f.vary:
            self.invalidate(primary)           # the resource's Vary changed: old variants unreachable
            variants = self.variants.get(primary)
        if variants is None:
            variants = self.variants[primary] = _Variants(f.vary)
        secondary = secondary_key(f.vary, request_headers) if f.vary else ()
        key = (primary, secondary)
        old = self.memory.get(key) or self.disk.get(key)
        if old is not None:
            self._remove(old)
            variants = self.variants.setdefault(primary, variants)
        entry = Entry(key, host_id, generation, status, reason, headers, body, f, now)
        variants.keys.add(secondary)
        self.stats["stored"] += 1
        if entry.size <= self.memory_bytes // 8:
            self._to_memory(entry)
        elif self._disk_on():
            self._to_disk(entry)
        else:
            variants.keys.discard(secondary)
            if not variants.keys:
                del self.variants[primary]
            return None
        return entry

    def touch(self, entry):
        """An entry was refreshed (304): make it the most recently used."""
        store = self.memory if entry.tier == "memory" else self.disk if entry.tier == "disk" else None
        if store is not None and store.get(entry.key) is entry:
            store.move_to_end(entry.key)

    def load(self, entry):
        """A Deferred firing with the body of a disk entry (read in a thread)."""
        self.stats["disk_hits"] += 1
        return self.run_in_thread(_read_file, entry.path)

    # -- tiers ----------------------------------------------------------------------------

    def _disk_on(self):
        return bool(self.root) and self.disk_bytes > 0 and self.run_in_thread is not None

    def _to_memory(self, entry):
        entry.tier = "memory"
        self.memory[entry.key] = entry
        self.memory_used += entry.size
        self._shrink()

    def _shrink(self):
        memory = self.memory
        while self.memory_used > self.memory_bytes and memory:
            _, entry = memory.popitem(last=False)
            self.memory_used -= entry.size
            self.stats["evicted"] += 1
            if self._disk_on() and entry.length <= self.disk_bytes // 8:
                entry.tier = None
                self._to_disk(entry)
            else:
                self._forget(entry)
        disk = self.disk
        while self.disk_used > self.disk_bytes and disk:
            _, entry = disk.popitem(last=False)
            self.disk_used -= entry.length
            self._drop_file(entry)
            self._forget(entry)

    def _to_disk(self, entry):
        """Move an entry's body to a file (written in a thread; served from memory meanwhile)."""
        if self.directory is None:
            self.directory = os.path.join(self.root, f"{os.getpid()}-{next(_instances)}")
            self.queued = []
            self.run_in_thread(_prepare_directory, self.root, self.directory).addBoth(self._prepared)
        entry.tier = "disk"
        entry.path = os.path.join(self.directory, f"{next(self.files):x}")
        entry.writing = True
        self.disk[entry.key] = entry
        self.disk_used += entry.length
        self.stats["to_disk"] += 1
        if self.queued is not None:
            self.queued.append((entry, entry.path))
        else:
            self._write(entry, entry.path)

    def _prepared(self, result):
        queued, self.queued = self.queued, None
        if not isinstance(result, str) and result is not None:
            log.warning("cache: preparing %s failed: %s", self.directory, getattr(result, "value", result))
        for entry, path in queued:
            self._write(entry, path)

    def _write(self, entry, path):
        body = entry.body

        def written(result):
            entry.writing = False
            failed = result is not None
            if failed:
                log.warning("cache: writing %s failed: %s", path, getattr(result, "value", result))
            if entry.doomed or entry.path != path:
                entry.doomed = False
                self.run_in_thread(_unlink, path).addErrback(lambda _: None)
            elif failed:
                if entry.tier == "disk":
                    self._remove(entry)
            elif entry.tier == "disk":
                entry.body = None            # from now on read back from the file
            return None

        if body is None:                     # cannot happen: a disk entry keeps its body until written
            return
        self.run_in_thread(_write_file, path, body).addBoth(written)

    def _drop_file(self, entry):
        if entry.path is None:
            return
        if entry.writing:
            entry.doomed = True
        else:
            self.run_in_thread(_unlink, entry.path).addErrback(lambda _: None)
        entry.path = None

    def _remove(self, entry):
        if entry.tier == "memory":
            if self.memory.pop(entry.key, None) is entry:
                self.memory_used -= entry.size
        elif entry.tier == "disk":
            if self.disk.pop(entry.key, None) is entry:
                self.disk_used -= entry.length
            self._drop_file(entry)
        self._forget(entry)

    def _forget(self, entry):
        entry.tier = None
        primary, secondary = entry.key
        variants = self.variants.get(primary)
        if variants is not None:
            variants.keys.discard(secondary)
            if not variants.keys:
                del self.variants[primary]

    # -- collapsed misses -----------------------------------------------------------------

    def lock(self, primary, tap):
        """None when `tap` leads (goes upstream), else the lock it must wait on."""
        lock = self.locks.get(primary)
        if lock is None:
            lock = self.locks[primary] = _Lock(tap)
            lock.timer = self.reactor.callLater(self.lock_timeout, self.release, primary, lock, False)
            return None
        lock.followers.append(tap)
        return lock

    def release(self, primary, lock, collapse):
        """The leader's response was stored (followers look up again, `collapse`) or not
        (followers go upstream, each on its own), or the lock timed out."""
        if self.locks.get(primary) is not lock:
            return
        del self.locks[primary]
        timer = lock.timer
        if timer is not None and timer.active():
            timer.cancel()
        for follower in lock.followers:
            follower.wake(collapse)


def _enabled(options):
    return options is not None and options.enabled


# -- per route: the options of each location ------------------------------------------------

class CachePolicy:
    """A host's cache settings for one snapshot: `options_for(path)` (None = off there)."""
    __slots__ = ("cache", "host_id", "generation", "scheme", "default", "locations")

    def __init__(self, cache, host, scheme):
        self.cache = cache
        self.host_id = host.id
        self.generation = host.cache_generation
        self.scheme = scheme
        self.default = host.cache if _enabled(host.cache) else None
        locations = [(loc.path.encode("ascii"), loc.cache if _enabled(loc.cache) else None)
                     for loc in host.locations if loc.cache is not None]
        locations.sort(key=lambda item: len(item[0]), reverse=True)
        self.locations = tuple(locations)

    def options_for(self, path):
        for prefix, options in self.locations:
            if path.startswith(prefix):
                return options
        return self.default

    def begin(self, exchange, request, resume):
        """The cache's part of `_dispatch`: True when the request goes upstream now (through
        `request.cache`, the tap, when set), False when it was answered or waits (then
        `resume(request)` is called later on the reactor thread)."""
        options = self.options_for(request.path) if self.locations else self.default
        if options is None or getattr(request, "upgrade", None) is not None:
            return True                  # off here; an Upgrade (WebSocket) is relayed raw, never cached
        method = request.method
        if method == b"GET" or method == b"HEAD":
            # Fast path: a plain request (no cache directives, credentials, ranges or
            # conditionals) for a fresh entry in memory is answered without a tap.
            headers = request.headers
            for lname, _, _ in headers:
                if lname in _SLOW:
                    break
            else:
                cache = self.cache
                host = request.host
                entry = cache.find((self.host_id, self.generation, self.scheme, host.lower() if host else b"",
                                    request.target), headers)
                if entry is not None and entry.body is not None:
                    now = cache.reactor.seconds()
                    if entry.age(now) < entry.lifetime:
                        replay(exchange, request, entry.response(HIT, now), entry.body, True)
                        return False
        tap = request.cache = CacheTap(self, options, exchange, request, resume)
        return tap.start(True)


def replay(exchange, request, response, body, finish):
    """Play a `CachedResponse` into an exchange as if an upstream answered: head, body, done."""
    if request.conn is None:
        request.conn = response          # so the exchange's detach unpairs what pairing did
    exchange.cork()
    try:
        exchange.upstream_head(response)
        if body and response.status != 304 and not request.is_head:
            exchange.upstream_body(body)
        if finish:
            exchange.upstream_done(response, False)
    finally:
        exchange.uncork()


class CacheTap:
    """One request on a cache-enabled location (see the module docstring)."""
    __slots__ = ("policy", "options", "cache", "exchange", "request", "resume", "state", "label", "primary",
                 "headers", "entry", "body", "storing", "parts", "size", "request_time", "lock", "swallow",
                 "authorized", "no_cache", "max_age", "if_none_match", "if_modified_since", "freshness",
                 "response", "_next")

    def __init__(self, policy, options, exchange, request, resume):
        self.policy = policy
        self.options = options
        self.cache = policy.cache
        self.exchange = exchange
        self.request = request
        self.resume = resume
        self.state = LOOKUP
        self.label = MISS
        self.primary = None
        self.headers = request.headers   # the client's own
        self.entry = None                # the stale entry being revalidated / kept for errors
        self.body = None                 # its body (read back from disk when needed)
        self.storing = False
        self.parts = None
        self.size = 0
        self.request_time = 0.0
        self.lock = None
        self.swallow = False
        self.response = None
        self.authorized = self.no_cache = False
        self.max_age = self.if_none_match = self.if_modified_since = self.freshness = None
        self._next = None

    # -- deciding -------------------------------------------------------------------------

    def start(self, collapse):
        request = self.request
        method = request.method
        cache = self.cache
        request.headers = self.headers   # a follower looking up again starts from the client's request
        self.entry = self.body = None
        self.label = MISS
        if method != b"GET" and method != b"HEAD":
            if method in _UNSAFE:
                cache.invalidate(self._primary())
            return self._bypass()
        cc = pragma = None
        self.authorized = False
        self.if_none_match = self.if_modified_since = None
        for lname, _, value in self.headers:
            if lname == b"cache-control":
                cc = (cc or []) + [value]
            elif lname == b"pragma":
                pragma = value
            elif lname == b"authorization":
                self.authorized = True
            elif lname == b"range":
                return self._bypass()
            elif lname == b"if-none-match":
                self.if_none_match = value
            elif lname == b"if-modified-since":
                self.if_modified_since = value
        directives = parse_cache_control(cc) if cc else {}
        if "no-store" in directives:
            return self._bypass()
        self.no_cache = "no-cache" in directives or (cc is None and pragma is not None and b"no-cache" in pragma.lower())
        self.max_age = seconds(directives, "max-age")
        primary = self._primary()
        entry = cache.find(primary, self.headers)
        if entry is not None and self.authorized and not entry.auth_ok:
            entry = None
        if entry is not None:
            now = cache.reactor.seconds()
            age = entry.age(now)
            fresh = age < entry.lifetime and not self.no_cache and self._young_enough(age)
            usable_stale = entry.etag is not None or entry.last_modified is not None or (
                not entry.no_stale and entry.stale_if_error > 0)
            if fresh or usable_stale:
                body = entry.body
                if body is None:              # on disk: read it first, then decide again
                    self.state = WAIT
                    cache.load(entry).addCallbacks(self._loaded, self._load_failed, callbackArgs=(entry, collapse))
                    return False
                return self._decide(entry, body, now, fresh, collapse)
        return self._miss(collapse)

    def _young_enough(self, age):
        """The request's max-age (0, as browsers send on reload, always revalidates)."""
        max_age = self.max_age
        return max_age is None or (max_age > 0 and age <= max_age)

    def _primary(self):
        request = self.request
        if self.primary is None:
            host = request.host or b""
            self.primary = (self.policy.host_id, self.policy.generation, self.policy.scheme,
                            host.lower(), request.target)
        return self.primary

    def _loaded(self, body, entry, collapse):
        if self.state is not WAIT:
            return
        self.state = LOOKUP
        now = self.cache.reactor.seconds()
        age = entry.age(now)
        fresh = age < entry.lifetime and not self.no_cache and self._young_enough(age)
        self._continue(lambda: self._decide(entry, body, now, fresh, collapse))

    def _load_failed(self, failure):
        log.warning("cache: reading an entry failed: %s", failure.value)
        if self.state is WAIT:
            self.state = LOOKUP
            self._continue(lambda: self._miss(False))

    def _continue(self, decide):
        """After a wait: the exchange checks the request is still wanted, then `proceed`."""
        self._next = decide
        self.resume(self.request)

    def proceed(self):
        """Called by the exchange's resume callback: True when it should go upstream now."""
        decide, self._next = self._next, None
        return decide() if decide is not None else True

    def wake(self, collapse):
        """The lock this follower waited on was released."""
        if self.state is not WAIT:
            return
        self.state = LOOKUP
        self._continue(lambda: self.start(collapse))

    def _decide(self, entry, body, now, fresh, collapse):
        if fresh:
            not_modified = self._client_not_modified(entry)
            self._serve(entry, body, HIT, now, not_modified, finish=True)
            return False
        self.entry = entry
        self.body = body
        self.label = EXPIRED
        if entry.etag is not None or entry.last_modified is not None:
            headers = [h for h in self.headers if h[0] not in _CONDITIONAL]
            if entry.etag is not None:
                headers.append((b"if-none-match", b"If-None-Match", entry.etag))
            if entry.last_modified is not None:
                headers.append((b"if-modified-since", b"If-Modified-Since", entry.last_modified))
            self.request.headers = headers
        return self._miss(collapse)

    def _miss(self, collapse):
        request = self.request
        self.state = FORWARD
        self.request_time = self.cache.reactor.seconds()
        if request.is_head:
            return True
        if collapse and not self.authorized:
            lock = self.cache.lock(self.primary, self)
            if lock is not None:
                self.state = WAIT
                return False
            self.lock = True
        self.storing = True
        return True

    def _bypass(self):
        self.state = FORWARD
        self.label = BYPASS
        return True

    def _client_not_modified(self, entry):
        if self.if_none_match is not None:
            return etag_matches(entry.etag, self.if_none_match)
        if self.if_modified_since is not None and entry.last_modified is not None:
            since = http_date(self.if_modified_since)
            modified = http_date(entry.last_modified)
            return since is not None and modified is not None and modified <= since
        return False

    def _serve(self, entry, body, label, now, not_modified, finish):
        """Replay `entry` into the exchange as its response."""
        self.label = label
        if finish:
            self.state = SERVED
        replay(self.exchange, self.request, entry.response(label, now, not_modified), body, finish)

    def _release(self, stored):
        if self.lock is not None:
            self.lock = None
            lock = self.cache.locks.get(self.primary)
            if lock is not None and lock.leader is self:
                self.cache.release(self.primary, lock, stored)

    def abandon(self):
        """The exchange gave up (client gone, refused): nothing is stored; followers go on."""
        self.storing = False
        self.parts = None
        if self.state is WAIT:
            lock = self.cache.locks.get(self.primary)
            if lock is not None and self in lock.followers:
                lock.followers.remove(self)
        self.state = DONE
        self._release(False)

    # -- the exchange interface, between the upstream connection and the exchange ---------

    def cork(self):
        self.exchange.cork()

    def uncork(self):
        self.exchange.uncork()

    def upstream_head(self, conn):
        status = conn.status
        entry = self.entry
        now = self.cache.reactor.seconds()
        if entry is not None:
            if status == 304:
                f = freshness(entry.status, _merge(entry.headers, conn.headers), self.request_time, now,
                              self.options.default_ttl, self.options.stale_if_error, self.authorized)
                if f.storable or f.lifetime > 0 or f.etag is not None:
                    entry.set_headers(_merge(entry.headers, _stored_headers(conn.headers)))
                    entry.refresh(f, now)
                    self.cache.touch(entry)
                self.storing = False
                self._release(True)
                self.swallow = True
                self._serve(entry, self.body, REVALIDATED, now, self._client_not_modified(entry), finish=False)
                return
            if status in STALE_ON and self._stale_ok(entry, now):
                self.storing = False
                self._release(False)
                self.swallow = True
                self._serve(entry, self.body, STALE, now, self._client_not_modified(entry), finish=False)
                return
        if self.storing:
            f = freshness(status, conn.headers, self.request_time, now, self.options.default_ttl,
                          self.options.stale_if_error, self.authorized)
            length = conn.content_length
            if not f.storable or (length is not None and length > self.cache.max_object):
                self.storing = False
                self._release(False)
            else:
                self.freshness = f
                self.parts = []
                self.size = 0
                self.response = (status, conn.reason, _stored_headers(conn.headers), length)
        conn.headers.append((b"x-cache-status", b"X-Cache-Status", self.label))
        self.exchange.upstream_head(conn)

    def upstream_body(self, data):
        if self.swallow:
            return
        if self.storing:
            self.size += len(data)
            if self.size > self.cache.max_object:
                self.storing = False
                self.parts = None
                self._release(False)
            else:
                self.parts.append(data)
        self.exchange.upstream_body(data)

    def upstream_done(self, conn, reusable):
        if self.storing:
            self.storing = False
            status, reason, headers, length = self.response
            body = b"".join(self.parts)
            self.parts = None
            stored = None
            if length is None or length == len(body):
                stored = self.cache.store(self.primary, self.headers, self.policy.host_id, self.policy.generation,
                                          status, reason, headers, body, self.freshness,
                                          self.cache.reactor.seconds())
            self.state = DONE
            self.exchange.upstream_done(conn, reusable)
            self._release(stored is not None)
            return
        self.state = DONE
        self._release(False)
        self.exchange.upstream_done(conn, reusable)

    def upstream_failed(self, conn, failure):
        request = self.request
        # The exchange retries a pooled connection that the upstream had closed (same test).
        retry = (conn.reused and not conn.got_bytes and not request.retried and not request.responded
                 and request.body_bytes == 0 and request.complete)
        if not retry:
            entry = self.entry
            if (entry is not None and not self.swallow and not request.responded
                    and self._stale_ok(entry, self.cache.reactor.seconds())):
                self.connect_failed(failure)
                return
            self.storing = False
            self.parts = None
            self._release(False)
        self.exchange.upstream_failed(conn, failure)

    def upstream_tunnel(self, rest):
        self.exchange.upstream_tunnel(rest)

    def upstream_closed(self):
        self.exchange.upstream_closed()

    def connect_failed(self, failure):
        """The upstream could not be reached (or failed before answering): True when a stale
        entry was served instead of the error."""
        entry = self.entry
        now = self.cache.reactor.seconds()
        if entry is None or self.swallow or not self._stale_ok(entry, now):
            self.storing = False
            self._release(False)
            return False
        self.storing = False
        self._release(False)
        self.swallow = True
        self._serve(entry, self.body, STALE, now, self._client_not_modified(entry), finish=True)
        return True

    def _stale_ok(self, entry, now):
        return not entry.no_stale and entry.stale_if_error > 0 and (
            entry.age(now) - entry.lifetime) <= entry.stale_if_error


def _merge(stored, fresh):
    """Stored headers updated with those of a 304 (RFC 9111 4.3.4): each name in the 304
    replaces the stored ones (framing and what the cache owns excepted)."""
    names = {n for n, _, _ in fresh if n not in _NOT_STORED}
    return [h for h in stored if h[0] not in names] + [h for h in fresh if h[0] not in _NOT_STORED]
