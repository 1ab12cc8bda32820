"""Header rules (set / add / remove on requests and responses), compiled once per snapshot.

The snapshot holds `HeaderRules` (names and values as str, already validated). A route
compiles them into `Compiled` objects: `drop`, a frozenset of lower-case names whose
incoming headers are left out (every `remove` and every `set` name), and `lines`, the
bytes of the header lines appended (`set` then `add`), plus `pairs` for HTTP/2. Applying
them is one membership test per header inside the pass `headers.py` already makes, and one
extra piece in the join; a route without rules carries None and pays nothing.

Semantics: `set` replaces every header of that name (case-insensitive), `remove` drops
every header of that name, `add` appends without touching the existing ones.

Headers the proxy adds itself:
- request rules that name X-Forwarded-For / -Proto / -Host or X-Real-IP apply to the
  proxy's own value too (`remove` drops it, `set` replaces it); otherwise they are added
  as always;
- a response rule naming Strict-Transport-Security replaces the host's HSTS line;
- X-Request-Id on responses is the proxy's correlation id and is never touched;
- hop-by-hop headers, Content-Length and Transfer-Encoding are framing the proxy owns:
  rules naming them are refused when the snapshot is parsed.

Location rules (`headers` on a location, not None) replace the host's rules for that path,
per direction: a location that only writes `response` rules drops the host's request rules
there too (the whole `headers` value is the override, as for the other location options).

Presets (host options, compiled into the same response `Compiled` of the host and of every
location, so they cost nothing beyond what rules cost):
- `security_headers`: X-Content-Type-Options: nosniff, X-Frame-Options: SAMEORIGIN,
  Referrer-Policy: strict-origin-when-cross-origin, Permissions-Policy: camera=(),
  microphone=(), geolocation=() (`SECURITY_HEADERS`). Each is a *default*: added only when
  the upstream's response has no header of that name, so an application that sets its own
  (Nextcloud, Grafana, ...) keeps its values; the check is one set of the response's names,
  made only on routes with the preset. `interest-cohort` (FLoC) and `browsing-topics` are
  left out: both are removed from Chrome, and unknown features only log console warnings.
  HSTS stays under ssl.hsts.
- `hide_upstream_identity`: Server, X-Powered-By, X-AspNet-Version, X-AspNetMvc-Version are
  dropped from responses (`UPSTREAM_IDENTITY`, added to the drop set).
Explicit rules win over presets: a preset header whose name a rule of the same direction
sets, adds or removes is left out of the defaults (the rule decides), and a rule that
sets or adds a hidden name still sends its own value.
"""
from dataclasses import dataclass

from proxy_engine.headers import HOP_BY_HOP

# Names a rule may not touch: framing and hop-by-hop, which the proxy owns.
FORBIDDEN = frozenset(n.decode("ascii") for n in HOP_BY_HOP) | {"content-length"}
FORWARDED = (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-real-ip")
SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "SAMEORIGIN"),
    ("Referrer-Policy", "strict-origin-when-cross-origin"),
    ("Permissions-Policy", "camera=(), microphone=(), geolocation=()"),
)
UPSTREAM_IDENTITY = ("server", "x-powered-by", "x-aspnet-version", "x-aspnetmvc-version")


@dataclass(frozen=True, slots=True)
class HeaderRules:
    set: tuple = ()          # ((name, value), ...) str
    remove: tuple = ()       # (lower-case name, ...) str
    add: tuple = ()          # ((name, value), ...) str

    def __bool__(self):
        return bool(self.set or self.remove or self.add)


class Compiled:
    """One direction's rules as bytes: `drop` (lower-case names), `lines` (b"Name: v\\r\\n"...),
    `pairs` ((lower-case name, value), ...) for HTTP/2, and `defaults` ((lower-case name,
    line, pair), ...): preset headers sent only when the message has none of that name."""
    __slots__ = ("drop", "lines", "pairs", "hsts", "defaults", "default_names", "default_lines")

    def __init__(self, rules, defaults=(), hide=()):
        drop = frozenset(n.lower().encode("ascii") for n, _ in rules.set) | frozenset(
            n.encode("ascii") for n in rules.remove)
        added = rules.set + rules.add
        self.lines = b"".join(n.encode("ascii") + b": " + v.encode("latin-1") + b"\r\n" for n, v in added)
        self.pairs = tuple((n.lower().encode("ascii"), v.encode("latin-1")) for n, v in added)
        # Explicit rules win: a preset naming a header a rule touches is left to the rule.
        ruled = drop | frozenset(n for n, _ in self.pairs)
        self.defaults = tuple(
            (n.lower().encode("ascii"), n.encode("ascii") + b": " + v.encode("latin-1") + b"\r\n",
             (n.lower().encode("ascii"), v.encode("latin-1")))
            for n, v in defaults if n.lower().encode("ascii") not in ruled)
        self.default_names = frozenset(lname for lname, _, _ in self.defaults)
        self.default_lines = b"".join(line for _, line, _ in self.defaults)
        self.drop = drop | frozenset(n.encode("ascii") for n in hide)
        # Response rules naming Strict-Transport-Security replace the host's HSTS line.
        self.hsts = b"strict-transport-security" in drop or any(
            n == b"strict-transport-security" for n, _ in self.pairs)

    def missing(self, headers):
        """The preset lines (HTTP/1.1) whose names `headers` (triples) do not carry."""
        present = self.default_names.intersection([h[0] for h in headers])
        if not present:
            return self.default_lines            # the common case: the upstream sent none
        return b"".join(line for lname, line, _ in self.defaults if lname not in present)

    def missing_pairs(self, headers):
        """The preset pairs (HTTP/2) whose names `headers` (triples) do not carry."""
        present = self.default_names.intersection([h[0] for h in headers])
        return [pair for lname, _, pair in self.defaults if lname not in present]

    def extended(self, drop, lines, pairs):
        """A copy that also drops `drop` and appends `lines` / `pairs` (CORS, per origin)."""
        out = Compiled.__new__(Compiled)
        out.drop = self.drop | drop
        out.lines = self.lines + lines
        out.pairs = self.pairs + pairs
        out.hsts = self.hsts
        out.defaults = self.defaults
        out.default_names = self.default_names
        out.default_lines = self.default_lines
        return out


EMPTY = HeaderRules()


def compile_rules(rules, defaults=(), hide=()):
    """A `Compiled` for `HeaderRules` and presets, or None when there is nothing to do."""
    return Compiled(rules, defaults, hide) if rules or defaults or hide else None


class RouteRules:
    """The compiled (request, response) rules of one host or location."""
    __slots__ = ("request", "response")

    def __init__(self, request, response, defaults=(), hide=()):
        self.request = compile_rules(request)
        self.response = compile_rules(response, defaults, hide)

    @classmethod
    def of(cls, request, response):
        """Already compiled (request, response) rules (either may be None)."""
        out = cls.__new__(cls)
        out.request = request
        out.response = response
        return out


class RouteHeaderRules:
    """A proxy route's rules: `for_path(path)` gives the `RouteRules` for a request path
    (longest location prefix with its own `headers`, else the host's)."""
    __slots__ = ("host", "locations")

    def __init__(self, host, locations):
        self.host = host
        self.locations = locations

    def for_path(self, path):
        for prefix, rules in self.locations:
            if path.startswith(prefix):
                return rules
        return self.host


def build_route_rules(host):
    """The `RouteHeaderRules` of a `ProxyHost`, or None when neither the host nor any
    location has rules or presets (the route then pays nothing per request)."""
    defaults = SECURITY_HEADERS if host.security_headers else ()
    hide = UPSTREAM_IDENTITY if host.hide_upstream_identity else ()
    host_rules = RouteRules(host.request_headers, host.response_headers, defaults, hide)
    locations = []
    any_rules = host_rules.request is not None or host_rules.response is not None
    for loc in sorted(host.locations, key=lambda loc: len(loc.path), reverse=True):
        if loc.headers is None:
            rules = host_rules
        else:
            request, response = loc.headers
            rules = RouteRules(request, response, defaults, hide)
            any_rules = any_rules or rules.request is not None or rules.response is not None
        locations.append((loc.path.encode("ascii"), rules))
    if not any_rules:
        return None
    return RouteHeaderRules(host_rules, tuple(locations))
