"""Routing: the table built once per snapshot, and the pure lookups on it.

`Router(snapshot)` indexes every host by domain: an exact dict, a wildcard dict keyed by
`*.rest` (a wildcard matches exactly one extra label), then the default site. Names are
bytes so the per-request lookup never decodes. `route(host)` returns one of:

- `ProxyRoute`: `select(path)` gives the `UpstreamGroup` of the longest matching location
  prefix, else the host's own group;
- `RedirectRoute`: a redirection host or the default site's redirect;
- `StaticRoute`: a fixed local answer (dead host 404, default 404/html/welcome), or
  `close=True` for the default site's 444 (close without answering).

`challenge(path)` answers ACME HTTP-01 for every host, before any route: the key
authorization (bytes) for a published token, None for any other path under
`/.well-known/acme-challenge/` (a 404), and `NOT_ACME` for every other path.

The Router and its routes are owned by one snapshot and never mutated after build, apart
from the round-robin cursors inside each group (health states and in-flight counts live in
the worker's `health.HealthRegistry`, which outlives snapshots).
"""
from proxy_engine.access import AccessPolicy
from proxy_engine.balancer import build_group
from proxy_engine.compress import build_route_compression
from proxy_engine.cors import build_cors
from proxy_engine.exploits import blocked as exploit_blocked
from proxy_engine.forwardauth import ForwardAuth
from proxy_engine.headerrules import build_route_rules
from proxy_engine.pages import ACCESS_CLOSED_PAGE, NOT_FOUND_PAGE, WELCOME_PAGE
from proxy_engine.ratelimit import Limiter, build_route_limits

ACME_PREFIX = b"/.well-known/acme-challenge/"
NOT_ACME = object()


class ProxyRoute:
    __slots__ = ("host", "group", "locations", "max_body_size", "timeouts", "websockets", "force_https", "hsts",
                 "header_rules", "access", "cors", "forward_auth", "compression", "cache", "rate_limit", "exploits")
    kind = "proxy"

    def __init__(self, host, scheme=b"http", https_port=None, tls=None, health=None):
        self.host = host
        # Plain HTTP with force_https and a servable certificate: b"" or b":port" for the
        # 301 to https; else None. HTTPS with hsts: the header line, else b"".
        self.force_https = None
        if (scheme == b"http" and host.ssl.force_https and https_port and tls is not None
                and host.id in tls.served_hosts):
            self.force_https = b"" if https_port == 443 else b":%d" % https_port
        self.hsts = b""
        if scheme == b"https" and host.ssl.hsts:
            self.hsts = b"Strict-Transport-Security: max-age=31536000%s%s\r\n" % (
                b"; includeSubDomains" if host.ssl.hsts_subdomains else b"",
                b"; preload" if host.ssl.hsts_preload else b"")
        # None without any header rule (nothing per request), else `RouteHeaderRules`.
        self.header_rules = build_route_rules(host)
        self.access = None       # the host's `access.AccessPolicy`, set by the Router
        self.rate_limit = None   # `ratelimit.RouteLimits` when the host or a location limits, set by the Router
        self.exploits = exploit_blocked if host.block_exploits else None   # (target, headers) -> None or a kind
        self.cors = build_cors(host.cors)          # `cors.CorsPolicy`, or None
        self.forward_auth = ForwardAuth(host.forward_auth) if host.forward_auth is not None else None
        # None when no path of the host compresses, else `compress.RouteCompression`.
        self.compression = build_route_compression(host)
        self.cache = None        # `cache.CachePolicy` when the host caches, set by `ResponseCache.swap`
        # `balancer.UpstreamGroup` (plain round robin) or `BalancedGroup` (policies, health,
        # sticky); `health` is the worker's `health.HealthRegistry` (None: no health states).
        self.group = build_group(host, host.upstreams, health)
        locations = []
        for loc in host.locations:
            group = build_group(host, loc.upstreams, health) if loc.upstreams else self.group
            locations.append((loc.path.encode("ascii"), group))
        locations.sort(key=lambda item: len(item[0]), reverse=True)
        self.locations = tuple(locations)
        self.max_body_size = host.max_body_size
        self.timeouts = host.timeouts
        self.websockets = host.websockets

    def select(self, path):
        """The upstream group for `path` (bytes, no query): longest location prefix wins."""
        for prefix, group in self.locations:
            if path.startswith(prefix):
                return group
        return self.group


class RedirectRoute:
    __slots__ = ("to", "code", "preserve_path")
    kind = "redirect"

    def __init__(self, to, code, preserve_path):
        self.to = to.encode("ascii").rstrip(b"/") if preserve_path else to.encode("ascii")
        self.code = code
        self.preserve_path = preserve_path

    def location(self, target):
        """The Location header value for a request whose origin-form target is `target`."""
        return self.to + target if self.preserve_path else self.to


class StaticRoute:
    __slots__ = ("status", "body", "close")
    kind = "static"

    def __init__(self, status, body=b"", close=False):
        self.status = status
        self.body = body
        self.close = close


def normalize_host(raw):
    """Lower-case host name from a Host header or authority (bytes): no port, no trailing dot."""
    host = raw.strip().lower()
    if host.startswith(b"["):
        end = host.find(b"]")
        return host[: end + 1] if end > 0 else host
    colon = host.rfind(b":")
    if colon >= 0:
        host = host[:colon]
    return host.rstrip(b".")


class Router:
    __slots__ = ("snapshot", "trusted", "exact", "wildcard", "default", "acme")

    def __init__(self, snapshot, scheme=b"http", https_port=None, run_in_thread=None, health=None, limiter=None):
        exact = {}
        wildcard = {}

        def add(domains, route):
            for name in domains:
                key = name.encode("ascii")
                (wildcard if key.startswith(b"*.") else exact)[key] = route

        # One policy per access list (its credential cache lives as long as this snapshot).
        policies = {a.name: AccessPolicy(a, self.trusts, run_in_thread) for a in snapshot.access_lists}
        closed = StaticRoute(403, ACCESS_CLOSED_PAGE)
        for host in snapshot.proxy_hosts:
            if host.access_list and host.access_list not in policies:
                add(host.domains, closed)    # fail closed: a missing access list must not leave the host open
                continue
            route = ProxyRoute(host, scheme, https_port, snapshot.tls, health)
            if host.access_list:
                route.access = policies[host.access_list]
            if host.rate_limit is not None or any(loc.rate_limit is not None for loc in host.locations):
                limiter = limiter or Limiter()    # the worker's buckets (kept across snapshots), else these
                route.rate_limit = build_route_limits(host, limiter, self.trusts)
            add(host.domains, route)
        for host in snapshot.redirection_hosts:
            add(host.domains, RedirectRoute(host.to, host.code, host.preserve_path))
        dead = StaticRoute(404, NOT_FOUND_PAGE)
        for host in snapshot.dead_hosts:
            add(host.domains, dead)
        self.snapshot = snapshot
        self.trusted = snapshot.settings.trusted_proxies
        self.exact = exact
        self.wildcard = wildcard
        self.default = default_route(snapshot.settings.default_site)
        self.acme = {ACME_PREFIX + token.encode("ascii"): key_authorization.encode("utf-8")
                     for token, key_authorization in snapshot.acme_challenges.items()}

    def trusts(self, peer):
        """Whether a client address (ipaddress object or None) is one of the trusted proxies."""
        return peer is not None and any(peer in net for net in self.trusted)

    def challenge(self, path):
        """The ACME HTTP-01 answer for `path` (bytes, may carry a query): see the module doc."""
        if not path.startswith(ACME_PREFIX):
            return NOT_ACME
        query = path.find(b"?")
        return self.acme.get(path if query < 0 else path[:query])

    def route(self, host):
        """The route for a normalized host name (bytes)."""
        route = self.exact.get(host)
        if route is not None:
            return route
        dot = host.find(b".")
        if dot > 0 and self.wildcard:
            route = self.wildcard.get(b"*" + host[dot:])
            if route is not None:
                return route
        return self.default


def default_route(site):
    if site.action == "444":
        return StaticRoute(444, close=True)
    if site.action == "redirect":
        return RedirectRoute(site.to, 302, preserve_path=False)
    if site.action == "html":
        return StaticRoute(200, site.body.encode("utf-8"))
    if site.action == "welcome":
        return StaticRoute(200, WELCOME_PAGE)
    return StaticRoute(404, NOT_FOUND_PAGE)
