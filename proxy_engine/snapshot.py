"""The snapshot: the plain document (docs/snapshot.md) parsed strictly into frozen objects.

`parse_snapshot(document)` either returns a `Snapshot` or raises one `SnapshotError` that
lists every problem with its path (`proxy_hosts[2].upstreams[0].port: 70000 out of range`).
A document with any error is refused whole; the caller keeps serving the last good one.

Strictness: every key the engine reads is type- and value-checked. Keys the engine does not
know yet are ignored, so the manager can add keys before the engine uses them. Keys for
features that are optional in the document (streams, certificates, cache, ...) default to
"off" when absent. Error messages never quote the value of a secret field (PEMs, hashes).

Nothing here touches the network, the clock or Django. Objects are immutable, so a request
can hold on to the snapshot it started with while a newer one is swapped in.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from proxy_engine.headerrules import FORBIDDEN as _FORBIDDEN_HEADERS
from proxy_engine.headerrules import HeaderRules

DEFAULT_ACTIONS = ("404", "444", "redirect", "html", "welcome")
POLICIES = ("round_robin", "least_conn", "ip_hash", "random", "first")
REDIRECT_CODES = (301, 302, 307, 308)
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_ACME_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
_SECRET_KEYS = frozenset({"certificate_pem", "key_pem", "chain_pem", "password_hash"})


class SnapshotError(ValueError):
    """A document that cannot be served. `errors` lists every problem as "path: message"."""

    def __init__(self, errors):
        self.errors = tuple(errors)
        super().__init__("invalid snapshot: " + "; ".join(self.errors))


@dataclass(frozen=True, slots=True)
class Upstream:
    scheme: str
    host: str
    port: int
    weight: int = 1
    verify: bool = True          # https only: False = no certificate verification
    ca_pem: str | None = None    # https only: trust these CAs instead of the system's
    # The key of state that outlives snapshots (connection pools, health); an https address
    # includes its TLS options, so differently verified connections are never shared.
    # Computed once here: it is read on every request (pool, balancer).
    address: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "address", ("http", self.host, self.port) if self.scheme == "http"
                           else (self.scheme, self.host, self.port, self.verify, self.ca_pem))


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 5.0
    response: float = 60.0


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    """`requests` per `per` seconds, `burst` more at once; `key` "ip" or "header:<Name>"."""
    requests: int
    per: float
    burst: int = 0
    key: str = "ip"


@dataclass(frozen=True, slots=True)
class CacheOptions:
    """`cache` of a host or location (proxy_engine.cache)."""
    enabled: bool = False
    default_ttl: float = 0.0     # seconds of freshness for cacheable responses without any; 0 = not stored
    stale_if_error: float = 0.0  # seconds a stale entry may answer when the upstream fails


@dataclass(frozen=True, slots=True)
class CacheSettings:
    memory_bytes: int = 64 << 20
    disk_bytes: int = 0          # 0 = no disk tier


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """Active check: GET `path` every `interval` s (bounded by `timeout`); a status within
    `expect` (inclusive) is a success; `healthy` / `unhealthy` consecutive results flip it."""
    path: str = "/"
    interval: float = 10.0
    timeout: float = 2.0
    expect: tuple = (200, 399)
    healthy: int = 2
    unhealthy: int = 3


@dataclass(frozen=True, slots=True)
class PassiveCheck:
    """`failures` failed exchanges within `window` s mark an upstream down for `cooldown` s."""
    failures: int = 3
    window: float = 10.0
    cooldown: float = 30.0


@dataclass(frozen=True, slots=True)
class Sticky:
    """Sticky sessions by cookie; `max_age` 0 = a session cookie."""
    cookie: str = "gh_sticky"
    max_age: float = 0.0


@dataclass(frozen=True, slots=True)
class Location:
    path: str
    upstreams: tuple         # () = the host's upstreams
    cache: object = None
    headers: object = None   # None (inherit the host's) or (request, response) HeaderRules
    compression: object = None
    rate_limit: object = None


@dataclass(frozen=True, slots=True)
class SSLOptions:
    certificate: str | None = None    # a name in `certificates`, or None (plain HTTP only)
    force_https: bool = False
    http2: bool = False
    hsts: bool = False
    hsts_subdomains: bool = False
    hsts_preload: bool = False


@dataclass(frozen=True, slots=True)
class Certificate:
    """PEM texts as the manager sent them; `proxy_engine.tls` parses them (and skips a
    broken one) when the snapshot's TLS table is built."""
    name: str
    domains: tuple
    certificate_pem: str
    key_pem: str
    chain_pem: str = ""

    def __repr__(self):                  # never the key
        return f"Certificate(name={self.name!r}, domains={self.domains!r})"


@dataclass(frozen=True, slots=True)
class CorsOptions:
    """A host's CORS policy (`proxy_engine.cors`); origins lower-case, ("*",) for any."""
    origins: tuple
    methods: tuple = ("GET", "HEAD", "POST")
    headers: tuple = ()          # allowed request headers, or ("*",)
    expose: tuple = ()
    credentials: bool = False
    max_age: float = 600.0


@dataclass(frozen=True, slots=True)
class ForwardAuthOptions:
    """A host's forward-auth service (`proxy_engine.forwardauth`)."""
    url: str
    response_headers: tuple = ()  # names copied from a 2xx auth answer into the upstream request
    timeout: float = 5.0


@dataclass(frozen=True, slots=True)
class ProxyHost:
    id: int
    domains: tuple
    upstreams: tuple
    policy: str = "round_robin"
    health_check: object = None      # HealthCheck or None
    passive: object = None           # PassiveCheck or None
    sticky: object = None            # Sticky or None
    websockets: bool = False
    timeouts: Timeouts = field(default_factory=Timeouts)
    max_body_size: int | None = None
    ssl: SSLOptions = field(default_factory=SSLOptions)
    access_list: str | None = None
    compression: tuple = ()
    cache: object = None
    rate_limit: object = None
    request_headers: HeaderRules = field(default_factory=HeaderRules)
    response_headers: HeaderRules = field(default_factory=HeaderRules)
    block_exploits: bool = False
    locations: tuple = ()
    security_headers: bool = False
    hide_upstream_identity: bool = False
    cors: CorsOptions | None = None
    forward_auth: ForwardAuthOptions | None = None
    cache_generation: int = 0    # the dashboard's purge increments it


@dataclass(frozen=True, slots=True)
class RedirectionHost:
    id: int
    domains: tuple
    to: str
    code: int
    preserve_path: bool


@dataclass(frozen=True, slots=True)
class DeadHost:
    id: int
    domains: tuple


@dataclass(frozen=True, slots=True)
class DefaultSite:
    action: str = "404"
    to: str | None = None
    body: str | None = None


@dataclass(frozen=True, slots=True)
class Settings:
    default_site: DefaultSite = field(default_factory=DefaultSite)
    trusted_proxies: tuple = ()   # ipaddress networks
    tls_fallback: str = "self_signed"   # HTTPS client naming no known host: "self_signed" | "reject"
    cache: CacheSettings = field(default_factory=CacheSettings)


@dataclass(frozen=True, slots=True)
class AccessRule:
    action: str                  # "allow" | "deny"
    source: str                  # as written: "all", an address or a CIDR
    network: object = None       # ipaddress network; None = all


@dataclass(frozen=True, slots=True)
class AccessUser:
    username: str
    password_hash: str           # Django hashers format (pbkdf2_sha256$...)

    def __repr__(self):                  # never the hash
        return f"AccessUser(username={self.username!r})"


@dataclass(frozen=True, slots=True)
class AccessList:
    name: str
    satisfy: str = "any"         # "any" | "all"
    pass_auth: bool = False      # forward the Authorization header upstream
    users: tuple = ()            # AccessUser
    rules: tuple = ()            # AccessRule, first match wins


@dataclass(frozen=True, slots=True)
class Snapshot:
    revision: int
    settings: Settings
    proxy_hosts: tuple = ()
    redirection_hosts: tuple = ()
    dead_hosts: tuple = ()
    streams: tuple = ()
    access_lists: tuple = ()      # AccessList
    certificates: tuple = ()      # Certificate
    tls: object = None            # proxy_engine.tls.TlsTable, attached in the reload thread when HTTPS is served
    acme_challenges: dict = field(default_factory=dict)   # HTTP-01 token -> key authorization (str)


class _Reader:
    """Collects errors while walking the document; each getter returns a safe fallback."""

    def __init__(self):
        self.errors = []

    def error(self, path, message):
        self.errors.append(f"{path}: {message}")

    def mapping(self, value, path):
        if not isinstance(value, dict):
            self.error(path, "must be a mapping")
            return {}
        return value

    def get(self, obj, key, path, kind, default=..., *, allow_none=False):
        where = f"{path}.{key}" if path else key
        if key not in obj:
            if default is ...:
                self.error(where, "is required")
                return None
            return default
        value = obj[key]
        if value is None and allow_none:
            return None
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            shown = "a secret value" if key in _SECRET_KEYS else repr(value)[:60]
            self.error(where, f"must be {_kind_name(kind)}, got {shown}")
            return None if default is ... else default
        return value

    def items(self, obj, key, path, default=()):
        value = self.get(obj, key, path, list, list(default))
        return value or []


def _kind_name(kind):
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false",
            list: "a list", dict: "a mapping"}.get(kind, kind.__name__)


def _domain(r, value, path):
    if not isinstance(value, str):
        r.error(path, "must be a string")
        return None
    name = value[2:] if value.startswith("*.") else value
    labels = name.split(".")
    if value != value.lower() or not all(_LABEL.match(label) for label in labels) or len(value) > 253:
        r.error(path, f"{value[:80]!r} is not a lower-case domain name (wildcard only as '*.' prefix)")
        return None
    if value.startswith("*.") and len(labels) < 2:
        r.error(path, f"{value!r}: a wildcard needs at least two labels after '*.'")
        return None
    return value


def _domains(r, obj, path, seen, owner):
    out = []
    for i, raw in enumerate(r.items(obj, "domains", path)):
        name = _domain(r, raw, f"{path}.domains[{i}]")
        if name is None:
            continue
        if name in seen:
            r.error(f"{path}.domains[{i}]", f"{name} is already claimed by {seen[name]}")
            continue
        seen[name] = owner
        out.append(name)
    if not out and not any(e.startswith(f"{path}.domains") for e in r.errors):
        r.error(f"{path}.domains", "needs at least one domain")
    return tuple(out)


def _upstreams(r, obj, path, required):
    out = []
    items = r.items(obj, "upstreams", path)
    for i, raw in enumerate(items):
        p = f"{path}.upstreams[{i}]"
        u = r.mapping(raw, p)
        scheme = r.get(u, "scheme", p, str, "http")
        if scheme not in ("http", "https"):
            r.error(f"{p}.scheme", f"must be http or https, got {scheme!r}")
        host = r.get(u, "host", p, str)
        if host is not None and (not host or any(c in host for c in " /\r\n\t")):
            r.error(f"{p}.host", f"{host[:80]!r} is not a host name or address")
        port = r.get(u, "port", p, int)
        if port is not None and not 1 <= port <= 65535:
            r.error(f"{p}.port", f"{port} out of range 1-65535")
        weight = r.get(u, "weight", p, int, 1)
        if weight is not None and not 1 <= weight <= 1000:
            r.error(f"{p}.weight", f"{weight} out of range 1-1000")
        verify = r.get(u, "verify", p, bool, True)
        ca_pem = r.get(u, "ca_pem", p, str, None, allow_none=True)
        if ca_pem is not None and "-----BEGIN CERTIFICATE-----" not in ca_pem:
            r.error(f"{p}.ca_pem", "must be PEM text of one or more certificates")
        if host and port:
            tls = {"verify": verify is not False, "ca_pem": ca_pem or None} if scheme == "https" else {}
            out.append(Upstream(scheme or "http", host.strip("[]").lower(), port, weight or 1, **tls))
    if required and not items:
        r.error(f"{path}.upstreams", "needs at least one upstream")
    return tuple(out)


def _header_name(r, name, path):
    """The header name if valid (token characters, not one the proxy owns), else None."""
    if not isinstance(name, str) or not _HEADER_NAME.match(name):
        r.error(path, f"{str(name)[:60]!r} is not a valid header name")
        return None
    if name.lower() in _FORBIDDEN_HEADERS:
        r.error(path, f"{name} is managed by the proxy (framing / hop-by-hop) and cannot be changed")
        return None
    return name


def _header_pairs(r, obj, key, path):
    pairs = []
    for name, value in r.get(obj, key, path, dict, {}).items():
        if _header_name(r, name, f"{path}.{key}") is None:
            continue
        if not isinstance(value, str) or any(ord(c) < 32 and c != "\t" or ord(c) == 127 or ord(c) > 255 for c in value):
            r.error(f"{path}.{key}.{name}", "value must be a Latin-1 string without control characters")
        else:
            pairs.append((name, value.strip(" \t")))
    return tuple(pairs)


def _header_rules(r, obj, path):
    if obj is None:
        return HeaderRules()
    obj = r.mapping(obj, path)
    removed = []
    for i, name in enumerate(r.get(obj, "remove", path, list, [])):
        if _header_name(r, name, f"{path}.remove[{i}]") is not None:
            removed.append(name.lower())
    return HeaderRules(_header_pairs(r, obj, "set", path), tuple(removed), _header_pairs(r, obj, "add", path))


def _header_directions(r, obj, path):
    """(request, response) `HeaderRules` of a `headers` mapping."""
    headers = r.mapping(obj, path)
    return (_header_rules(r, headers.get("request"), f"{path}.request"),
            _header_rules(r, headers.get("response"), f"{path}.response"))


_ORIGIN = re.compile(r"^[a-z][a-z0-9+.-]*://[^\s/?#@]+$")
_METHOD = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def _names(r, obj, key, path, check):
    """A list of strings under `key` (absent: empty), each passed through `check(value, path)`."""
    out = []
    for i, value in enumerate(r.get(obj, key, path, list, [])):
        checked = check(value, f"{path}.{key}[{i}]")
        if checked is not None:
            out.append(checked)
    return tuple(out)


def _cors(r, raw, path):
    if raw is None:
        return None
    c = r.mapping(raw, path)

    def origin(value, where):
        if value == "*":
            return value
        if not isinstance(value, str) or not value.isascii() or not _ORIGIN.match(value.lower().rstrip("/")):
            r.error(where, f"{str(value)[:80]!r} is not an origin (scheme://host[:port]) or '*'")
            return None
        return value.lower().rstrip("/")

    def method(value, where):
        if not isinstance(value, str) or not _METHOD.match(value):
            r.error(where, f"{str(value)[:40]!r} is not an HTTP method or '*'")
            return None
        return value if value == "*" else value.upper()

    def header(value, where):
        if value == "*" or isinstance(value, str) and _HEADER_NAME.match(value):
            return value
        r.error(where, f"{str(value)[:60]!r} is not a valid header name or '*'")
        return None

    if "origins" not in c:
        r.error(f"{path}.origins", "is required")
    origins = _names(r, c, "origins", path, origin)
    if "origins" in c and not origins and not any(e.startswith(f"{path}.origins") for e in r.errors):
        r.error(f"{path}.origins", "needs at least one origin (or '*')")
    if "*" in origins and len(origins) > 1:
        r.error(f"{path}.origins", "'*' must be the only origin")
    methods = _names(r, c, "methods", path, method) if "methods" in c else ("GET", "HEAD", "POST")
    credentials = r.get(c, "credentials", path, bool, False)
    max_age = r.get(c, "max_age", path, float, 600.0)
    if max_age is not None and not 0 <= max_age <= 86400:
        r.error(f"{path}.max_age", f"must be between 0 and 86400 seconds, got {max_age}")
    expose = _names(r, c, "expose", path, header)
    return CorsOptions(origins, methods, _names(r, c, "headers", path, header), expose,
                       bool(credentials), max_age if max_age is not None else 600.0)


def _forward_auth(r, raw, path):
    if raw is None:
        return None
    f = r.mapping(raw, path)
    url = _http_url(r, r.get(f, "url", path, str), f"{path}.url")
    if url is not None and not url.isascii():
        r.error(f"{path}.url", "must be ASCII (punycode host, percent-encoded path)")
        url = None

    def header(value, where):
        name = _header_name(r, value, where)
        if name is not None and name.lower() == "host":
            r.error(where, "Host cannot be copied from the authentication service")
            return None
        return name

    names = _names(r, f, "response_headers", path, header)
    timeout = r.get(f, "timeout", path, float, 5.0)
    if timeout is not None and not 0 < timeout <= 300:
        r.error(f"{path}.timeout", f"must be greater than 0 and at most 300 seconds, got {timeout}")
    return ForwardAuthOptions(url or "", names, timeout or 5.0)


def _positive(r, value, path):
    if value is not None and not value > 0:
        r.error(path, f"must be greater than 0, got {value}")
    return value


def _rate_limit(r, raw, path):
    """A RateLimitConfig, or None (absent, or invalid: the error is recorded)."""
    if raw is None:
        return None
    requests = r.get(raw, "requests", path, int)
    per = r.get(raw, "per", path, float, 1.0)
    burst = r.get(raw, "burst", path, int, 0)
    key = r.get(raw, "key", path, str, "ip")
    ok = requests is not None and per is not None and burst is not None and key is not None
    if requests is not None and requests <= 0:
        r.error(f"{path}.requests", f"must be greater than 0, got {requests}")
        ok = False
    if per is not None and not 0 < per <= 315360000:          # 10 years: microseconds stay exact in Lua
        r.error(f"{path}.per", f"must be greater than 0 and at most 10 years (315360000), got {per}")
        ok = False
    if burst is not None and burst < 0:
        r.error(f"{path}.burst", f"must be 0 or more, got {burst}")
        ok = False
    if key is not None and key != "ip" and not (key.startswith("header:") and _HEADER_NAME.match(key[7:])):
        r.error(f"{path}.key", f'must be "ip" or "header:<Header-Name>", got {key[:80]!r}')
        ok = False
    return RateLimitConfig(requests, per, burst, key) if ok else None


def _proxy_host(r, raw, path, seen):
    h = r.mapping(raw, path)
    host_id = r.get(h, "id", path, int)
    domains = _domains(r, h, path, seen, f"proxy host {host_id}")
    upstreams = _upstreams(r, h, path, required=True)
    lb = r.mapping(r.get(h, "load_balancing", path, dict, {}), f"{path}.load_balancing")
    policy = r.get(lb, "policy", f"{path}.load_balancing", str, "round_robin")
    if policy not in POLICIES:
        r.error(f"{path}.load_balancing.policy", f"must be one of {', '.join(POLICIES)}, got {policy!r}")
    health, passive, sticky = _load_balancing(r, lb, f"{path}.load_balancing")
    tp = f"{path}.timeouts"
    t = r.mapping(r.get(h, "timeouts", path, dict, {}), tp)
    timeouts = Timeouts(
        _positive(r, r.get(t, "connect", tp, float, 5.0), f"{tp}.connect") or 5.0,
        _positive(r, r.get(t, "response", tp, float, 60.0), f"{tp}.response") or 60.0,
    )
    max_body = r.get(h, "max_body_size", path, int, None, allow_none=True)
    if max_body is not None and max_body < 0:
        r.error(f"{path}.max_body_size", f"must be 0 or more, got {max_body}")
    compression = _compression(r, r.get(h, "compression", path, list, []), f"{path}.compression")
    request_headers, response_headers = _header_directions(r, r.get(h, "headers", path, dict, {}), f"{path}.headers")
    locations = []
    seen_paths = set()
    for i, raw_loc in enumerate(r.items(h, "locations", path)):
        lp = f"{path}.locations[{i}]"
        loc = r.mapping(raw_loc, lp)
        loc_path = r.get(loc, "path", lp, str)
        if loc_path is not None:
            if not loc_path.startswith("/") or any(ord(c) <= 32 or ord(c) == 127 for c in loc_path):
                r.error(f"{lp}.path", f"{loc_path[:80]!r} must start with / and contain no spaces")
            elif loc_path in seen_paths:
                r.error(f"{lp}.path", f"{loc_path} appears twice")
            seen_paths.add(loc_path)
        locations.append(Location(
            path=loc_path or "/",
            upstreams=_upstreams(r, loc, lp, required=False),
            cache=_cache_options(r, r.get(loc, "cache", lp, dict, None, allow_none=True), f"{lp}.cache"),
            headers=_header_directions(r, r.get(loc, "headers", lp, dict, None, allow_none=True), f"{lp}.headers")
            if loc.get("headers") is not None else None,
            compression=_compression(r, r.get(loc, "compression", lp, list, None, allow_none=True),
                                     f"{lp}.compression"),
            rate_limit=_rate_limit(r, r.get(loc, "rate_limit", lp, dict, None, allow_none=True), f"{lp}.rate_limit"),
        ))
    return ProxyHost(
        id=host_id or 0,
        domains=domains,
        upstreams=upstreams,
        policy=policy or "round_robin",
        health_check=health,
        passive=passive,
        sticky=sticky,
        websockets=bool(r.get(h, "websockets", path, bool, False)),
        timeouts=timeouts,
        max_body_size=max_body,
        ssl=_ssl_options(r, r.get(h, "ssl", path, dict, None, allow_none=True), f"{path}.ssl"),
        access_list=r.get(h, "access_list", path, str, None, allow_none=True),
        compression=compression or (),
        cache=_cache_options(r, r.get(h, "cache", path, dict, None, allow_none=True), f"{path}.cache"),
        cache_generation=_cache_generation(r, h, path),
        rate_limit=_rate_limit(r, r.get(h, "rate_limit", path, dict, None, allow_none=True), f"{path}.rate_limit"),
        request_headers=request_headers,
        response_headers=response_headers,
        block_exploits=bool(r.get(h, "block_exploits", path, bool, False)),
        locations=tuple(locations),
        security_headers=bool(r.get(h, "security_headers", path, bool, False)),
        hide_upstream_identity=bool(r.get(h, "hide_upstream_identity", path, bool, False)),
        cors=_cors(r, r.get(h, "cors", path, dict, None, allow_none=True), f"{path}.cors"),
        forward_auth=_forward_auth(r, r.get(h, "forward_auth", path, dict, None, allow_none=True),
                                   f"{path}.forward_auth"),
    )


def _seconds(r, value, path):
    """A duration > 0 and at most a day (None if not)."""
    if value is not None and not 0 < value <= 86400:
        r.error(path, f"must be more than 0 and at most 86400 seconds, got {value}")
        return None
    return value


def _int_in(r, value, path, low, high):
    if value is not None and not low <= value <= high:
        r.error(path, f"{value} out of range {low}-{high}")
        return None
    return value


def _load_balancing(r, lb, path):
    """(HealthCheck | None, PassiveCheck | None, Sticky | None) of a `load_balancing` mapping."""
    health = passive = sticky = None
    raw = r.get(lb, "health_check", path, dict, None, allow_none=True)
    if raw is not None:
        hp = f"{path}.health_check"
        hpath = r.get(raw, "path", hp, str)
        if hpath is not None and (not hpath.startswith("/") or any(ord(c) <= 32 or ord(c) == 127 for c in hpath)):
            r.error(f"{hp}.path", "must start with / and contain no spaces or control characters")
            hpath = None
        interval = _seconds(r, r.get(raw, "interval", hp, float), f"{hp}.interval")
        timeout = _seconds(r, r.get(raw, "timeout", hp, float, 2.0), f"{hp}.timeout")
        expect = r.get(raw, "expect", hp, list, [200, 399])
        if expect is not None and (len(expect) != 2 or not all(
                isinstance(v, int) and not isinstance(v, bool) and 100 <= v <= 599 for v in expect)
                or expect[0] > expect[1]):
            r.error(f"{hp}.expect", f"must be [lowest, highest] statuses within 100-599, got {str(expect)[:40]}")
            expect = None
        healthy = _int_in(r, r.get(raw, "healthy", hp, int, 2), f"{hp}.healthy", 1, 100)
        unhealthy = _int_in(r, r.get(raw, "unhealthy", hp, int, 3), f"{hp}.unhealthy", 1, 100)
        if None not in (hpath, interval, timeout, expect, healthy, unhealthy):
            health = HealthCheck(hpath, interval, timeout, tuple(expect), healthy, unhealthy)
    raw = r.get(lb, "passive", path, dict, None, allow_none=True)
    if raw is not None:
        pp = f"{path}.passive"
        failures = _int_in(r, r.get(raw, "failures", pp, int, 3), f"{pp}.failures", 1, 1000)
        window = _seconds(r, r.get(raw, "window", pp, float, 10.0), f"{pp}.window")
        cooldown = _seconds(r, r.get(raw, "cooldown", pp, float, 30.0), f"{pp}.cooldown")
        if None not in (failures, window, cooldown):
            passive = PassiveCheck(failures, window, cooldown)
    raw = r.get(lb, "sticky", path, dict, None, allow_none=True)
    if raw is not None:
        sp = f"{path}.sticky"
        cookie = r.get(raw, "cookie", sp, str, "gh_sticky")
        if cookie is not None and (not _HEADER_NAME.match(cookie) or len(cookie) > 64):
            r.error(f"{sp}.cookie", f"{cookie[:40]!r} is not a cookie name (1-64 token characters)")
            cookie = None
        max_age = r.get(raw, "max_age", sp, float, 0.0)
        if max_age is not None and not 0 <= max_age <= 10 * 365 * 86400:
            r.error(f"{sp}.max_age", f"must be 0 (session) to 10 years in seconds, got {max_age}")
            max_age = None
        if cookie is not None and max_age is not None:
            sticky = Sticky(cookie, max_age)
    return health, passive, sticky


def _compression(r, names, path):
    """A compression list as a tuple of known encoding names (None stays None: inherit)."""
    if names is None:
        return None
    for i, name in enumerate(names):
        if name not in ("gzip", "br", "zstd"):
            r.error(f"{path}[{i}]", f"unknown encoding {str(name)[:20]!r} (gzip, br or zstd)")
    return tuple(names)


def _cache_options(r, raw, path):
    """None (absent / inherit) or `CacheOptions`."""
    if raw is None:
        return None
    enabled = r.get(raw, "enabled", path, bool, False)
    ttl = r.get(raw, "default_ttl", path, float, 0.0)
    stale = r.get(raw, "stale_if_error", path, float, 0.0)
    for key, value in (("default_ttl", ttl), ("stale_if_error", stale)):
        if value is not None and not 0 <= value < float("inf"):
            r.error(f"{path}.{key}", f"must be 0 or more seconds, got {value}")
    return CacheOptions(bool(enabled), ttl if ttl and ttl > 0 else 0.0, stale if stale and stale > 0 else 0.0)


def _cache_generation(r, h, path):
    generation = r.get(h, "cache_generation", path, int, 0)
    if generation is not None and generation < 0:
        r.error(f"{path}.cache_generation", f"must be 0 or more, got {generation}")
        return 0
    return generation or 0


def _cache_settings(r, raw):
    if raw is None:
        return CacheSettings()
    memory = r.get(raw, "memory_bytes", "settings.cache", int, 64 << 20)
    disk = r.get(raw, "disk_bytes", "settings.cache", int, 0)
    if memory is not None and memory < 0:
        r.error("settings.cache.memory_bytes", f"must be 0 or more, got {memory}")
        memory = None
    if disk is not None and disk < 0:
        r.error("settings.cache.disk_bytes", f"must be 0 or more, got {disk}")
        disk = None
    return CacheSettings(64 << 20 if memory is None else memory, disk or 0)


def _ssl_options(r, raw, path):
    if raw is None:
        return SSLOptions()
    flags = {key: bool(r.get(raw, key, path, bool, False))
             for key in ("force_https", "http2", "hsts", "hsts_subdomains", "hsts_preload")}
    return SSLOptions(certificate=r.get(raw, "certificate", path, str, None, allow_none=True), **flags)


def _certificates(r, items):
    """Types are checked here; PEM contents in `proxy_engine.tls` (a broken certificate is
    skipped there, never refusing the snapshot)."""
    out = []
    for i, raw in enumerate(items):
        p = f"certificates[{i}]"
        c = r.mapping(raw, p)
        name = r.get(c, "name", p, str)
        domains = tuple(d for d in r.get(c, "domains", p, list, []) if isinstance(d, str))
        cert_pem = r.get(c, "certificate_pem", p, str)
        key_pem = r.get(c, "key_pem", p, str)
        chain_pem = r.get(c, "chain_pem", p, str, "", allow_none=True)
        if name is not None and cert_pem is not None and key_pem is not None:
            out.append(Certificate(name, domains, cert_pem, key_pem, chain_pem or ""))
    return tuple(out)


def _http_url(r, value, path):
    if value is not None and not re.match(r"^https?://[^\s/?#]+[^\s]*$", value):
        r.error(path, f"{value[:80]!r} is not an http(s) URL")
    return value


def _settings(r, raw):
    s = r.mapping(raw, "settings")
    d = r.mapping(r.get(s, "default_site", "settings", dict, {"action": "404"}), "settings.default_site")
    action = r.get(d, "action", "settings.default_site", str, "404")
    to = body = None
    if action not in DEFAULT_ACTIONS:
        r.error("settings.default_site.action", f"must be one of {', '.join(DEFAULT_ACTIONS)}, got {action!r}")
    elif action == "redirect":
        to = _http_url(r, r.get(d, "to", "settings.default_site", str), "settings.default_site.to")
    elif action == "html":
        body = r.get(d, "body", "settings.default_site", str)
    networks = []
    for i, cidr in enumerate(r.get(s, "trusted_proxies", "settings", list, [])):
        try:
            networks.append(ipaddress.ip_network(cidr, strict=False))
        except (TypeError, ValueError):
            r.error(f"settings.trusted_proxies[{i}]", f"{str(cidr)[:60]!r} is not a CIDR")
    fallback = r.get(s, "tls_fallback", "settings", str, "self_signed")
    if fallback not in ("self_signed", "reject"):
        r.error("settings.tls_fallback", f"must be self_signed or reject, got {fallback!r}")
    cache = _cache_settings(r, r.get(s, "cache", "settings", dict, None, allow_none=True))
    return Settings(DefaultSite(action or "404", to, body), tuple(networks), fallback or "self_signed", cache=cache)


def _access_lists(r, items):
    out = []
    names = set()
    for i, raw in enumerate(items):
        p = f"access_lists[{i}]"
        a = r.mapping(raw, p)
        name = r.get(a, "name", p, str)
        if name is not None:
            if not name:
                r.error(f"{p}.name", "must not be empty")
            elif name in names:
                r.error(f"{p}.name", f"{name[:80]!r} appears twice")
            names.add(name)
        satisfy = r.get(a, "satisfy", p, str, "any")
        if satisfy not in ("any", "all"):
            r.error(f"{p}.satisfy", f"must be any or all, got {satisfy!r}")
        pass_auth = r.get(a, "pass_auth", p, bool, False)
        users = []
        usernames = set()
        for j, raw_user in enumerate(r.items(a, "users", p)):
            up = f"{p}.users[{j}]"
            u = r.mapping(raw_user, up)
            username = r.get(u, "username", up, str)
            password_hash = r.get(u, "password_hash", up, str)
            if username is not None:
                if not username:
                    r.error(f"{up}.username", "must not be empty")
                elif username in usernames:
                    r.error(f"{up}.username", f"{username[:80]!r} appears twice")
                usernames.add(username)
            if username and password_hash is not None:
                users.append(AccessUser(username, password_hash))
        rules = []
        for j, raw_rule in enumerate(r.items(a, "rules", p)):
            rp = f"{p}.rules[{j}]"
            rule = r.mapping(raw_rule, rp)
            action = r.get(rule, "action", rp, str)
            if action is not None and action not in ("allow", "deny"):
                r.error(f"{rp}.action", f"must be allow or deny, got {action[:20]!r}")
            source = r.get(rule, "source", rp, str)
            network = None
            if source is not None and source.strip().lower() != "all":
                try:
                    network = ipaddress.ip_network(source.strip(), strict=False)
                except ValueError:
                    r.error(f"{rp}.source", f"{source[:60]!r} is not an address, a CIDR or 'all'")
                    continue
            if action in ("allow", "deny") and source is not None:
                rules.append(AccessRule(action, source, network))
        out.append(AccessList(name or "", satisfy if satisfy in ("any", "all") else "any", bool(pass_auth),
                              tuple(users), tuple(rules)))
    return tuple(out)


def _acme_challenges(r, doc):
    challenges = {}
    for i, raw in enumerate(r.items(doc, "acme_challenges", "")):
        p = f"acme_challenges[{i}]"
        c = r.mapping(raw, p)
        token = r.get(c, "token", p, str)
        key_authorization = r.get(c, "key_authorization", p, str)
        if token is not None and not _ACME_TOKEN.match(token):
            r.error(f"{p}.token", "must be base64url characters")
        elif token is not None and key_authorization is not None:
            challenges[token] = key_authorization
    return challenges


def parse_snapshot(document):
    """Return a `Snapshot` for `document`, or raise `SnapshotError` naming every problem."""
    r = _Reader()
    doc = r.mapping(document, "document")
    revision = r.get(doc, "revision", "", int)
    if revision is not None and revision < 0:
        r.error("revision", "must be 0 or more")
    settings = _settings(r, r.get(doc, "settings", "", dict, {}))
    seen = {}
    proxy_hosts = tuple(
        _proxy_host(r, raw, f"proxy_hosts[{i}]", seen) for i, raw in enumerate(r.items(doc, "proxy_hosts", ""))
    )
    redirections = []
    for i, raw in enumerate(r.items(doc, "redirection_hosts", "")):
        p = f"redirection_hosts[{i}]"
        h = r.mapping(raw, p)
        host_id = r.get(h, "id", p, int)
        domains = _domains(r, h, p, seen, f"redirection host {host_id}")
        to = _http_url(r, r.get(h, "to", p, str), f"{p}.to")
        code = r.get(h, "code", p, int, 301)
        if code not in REDIRECT_CODES:
            r.error(f"{p}.code", f"must be one of 301, 302, 307, 308, got {code!r}")
        preserve = r.get(h, "preserve_path", p, bool, True)
        redirections.append(RedirectionHost(host_id or 0, domains, to or "", code or 301, bool(preserve)))
    dead = []
    for i, raw in enumerate(r.items(doc, "dead_hosts", "")):
        p = f"dead_hosts[{i}]"
        h = r.mapping(raw, p)
        host_id = r.get(h, "id", p, int)
        dead.append(DeadHost(host_id or 0, _domains(r, h, p, seen, f"dead host {host_id}")))
    certificates = _certificates(r, r.items(doc, "certificates", ""))
    for i, raw in enumerate(r.items(doc, "streams", "")):
        r.mapping(raw, f"streams[{i}]")
    access_lists = _access_lists(r, r.items(doc, "access_lists", ""))
    acme_challenges = _acme_challenges(r, doc)
    if r.errors:
        raise SnapshotError(r.errors)
    return Snapshot(
        revision=revision,
        settings=settings,
        proxy_hosts=proxy_hosts,
        redirection_hosts=tuple(redirections),
        dead_hosts=tuple(dead),
        streams=tuple(doc.get("streams") or ()),
        access_lists=access_lists,
        certificates=certificates,
        acme_challenges=acme_challenges,
    )
