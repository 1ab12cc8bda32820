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
"""
from dataclasses import dataclass

from proxy_engine.headers import HOP_BY_HOP

# Names a rule may not touch: framing and hop-by-hop, which the proxy owns.
FORBIDDEN = frozenset(n.decode("ascii") for n in HOP_BY_HOP) | {"content-length"}
FORWARDED = (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-real-ip")


@dataclass(frozen=True, slots=True)
class HeaderRules:
    set: tuple = ()          # ((name, value), ...) str
    remove: tuple = ()       # (lower-case name, ...) str
    add: tuple = ()          # ((name, value), ...) str

    def __bool__(self):
        return bool(self.set or self.remove or self.add)


class Compiled:
    """One direction's rules as bytes: `drop` (lower-case names), `lines` (b"Name: v\\r\\n"...),
    `pairs` ((lower-case name, value), ...) for HTTP/2."""
    __slots__ = ("drop", "lines", "pairs", "hsts")

    def __init__(self, rules):
        self.drop = frozenset(n.lower().encode("ascii") for n, _ in rules.set) | frozenset(
            n.encode("ascii") for n in rules.remove)
        added = rules.set + rules.add
        self.lines = b"".join(n.encode("ascii") + b": " + v.encode("latin-1") + b"\r\n" for n, v in added)
        self.pairs = tuple((n.lower().encode("ascii"), v.encode("latin-1")) for n, v in added)
        # Response rules naming Strict-Transport-Security replace the host's HSTS line.
        self.hsts = b"strict-transport-security" in self.drop or any(
            n == b"strict-transport-security" for n, _ in self.pairs)


def compile_rules(rules):
    """A `Compiled` for `HeaderRules`, or None when there is nothing to do."""
    return Compiled(rules) if rules else None


class RouteRules:
    """The compiled (request, response) rules of one host or location."""
    __slots__ = ("request", "response")

    def __init__(self, request, response):
        self.request = compile_rules(request)
        self.response = compile_rules(response)


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
    location has rules (the route then pays nothing per request)."""
    host_rules = RouteRules(host.request_headers, host.response_headers)
    locations = []
    any_rules = host_rules.request is not None or host_rules.response is not None
    for loc in sorted(host.locations, key=lambda loc: len(loc.path), reverse=True):
        if loc.headers is None:
            rules = host_rules
        else:
            request, response = loc.headers
            rules = RouteRules(request, response)
            any_rules = any_rules or rules.request is not None or rules.response is not None
        locations.append((loc.path.encode("ascii"), rules))
    if not any_rules:
        return None
    return RouteHeaderRules(host_rules, tuple(locations))
