"""CORS for a proxy host: preflights answered by the proxy, allow-origin headers on responses.

Built once per snapshot (`CorsPolicy(options)`, on `ProxyRoute.cors`); a host without `cors`
carries None and pays nothing. Both protocols call it from their `_gate` stage, before the
access list and forward auth (a preflight carries no credentials, so it must not meet them):

- `preflight(method, headers)`: None unless the request is a preflight (OPTIONS with Origin
  and Access-Control-Request-Method). A preflight is answered here and never reaches the
  upstream: from an allowed origin `204` with Access-Control-Allow-Origin / -Methods /
  -Headers / -Max-Age (/ -Credentials) and `Vary: Origin, Access-Control-Request-Method,
  Access-Control-Request-Headers`; from any other origin `403` without any CORS header
  (the browser fails the preflight either way; a 403 says so plainly in the developer tools
  and the access log, as Spring and rs/cors do). The 204 always lists the configured methods
  and headers; the browser compares the request with them (Fetch "CORS-preflight fetch").
- `rules_for(rules, headers)`: the request's `RouteRules` with the response side extended,
  so the CORS headers ride on the header-rules addition both protocols already make (no
  extra step in the response path). The upstream's own Access-Control-Allow-Origin,
  -Allow-Credentials and -Expose-Headers are always dropped (the proxy is the one source of
  truth for the host); for an allowed Origin the proxy's are added. The combined rules are
  precompiled per (location rules, origin) for listed origins, so a request costs one scan
  of its headers for Origin and one dict lookup.
- `local_lines(headers)`: the same headers for an answer the proxy makes itself after the
  gate (forward-auth denials and failures), so a cross-origin script can read a 401.

Origin rules: exact origins (lower-case `scheme://host[:port]`, as browsers send them), or
"*". "*" without credentials sends `Access-Control-Allow-Origin: *` on every response (the
same for every client, so no `Vary`); with credentials `*` is never sent (the Fetch
standard forbids it): the request's Origin is echoed, with `Vary: Origin`. Listed origins
always get `Vary: Origin` (also on responses to other origins), so a shared cache never
hands one origin's answer to another. "*" in `methods` / `headers` is echoed from the
request's Access-Control-Request-Method / -Headers when credentials are on (the wildcard
is literal for credentialed requests), sent as "*" otherwise.
"""
from proxy_engine.headerrules import Compiled, HeaderRules, RouteRules

_DROP = frozenset((b"access-control-allow-origin", b"access-control-allow-credentials",
                   b"access-control-expose-headers"))
_NO_RULES = RouteRules.of(None, None)
_EMPTY = Compiled(HeaderRules())
_MEMO_LIMIT = 256            # echoed origins ("*" with credentials) are not precompiled beyond this


class Preflight:
    """A local answer to a preflight: `status`, header `lines` (HTTP/1.1) and `pairs` (h2)."""
    __slots__ = ("status", "lines", "pairs", "cause")

    def __init__(self, status, lines, cause=None):
        self.status = status
        self.lines = lines
        self.cause = cause       # the error page's words (403), or None (204, no body)
        self.pairs = tuple(_pair(line + b"\r\n") for line in lines.split(b"\r\n") if line)


def _pair(line):
    name, _, value = line.rstrip(b"\r\n").partition(b":")
    return name.lower(), value.strip()


def _header_value(headers, lname):
    for name, _, value in headers:
        if name == lname:
            return value
    return None


class CorsPolicy:
    __slots__ = ("origins", "any_origin", "credentials", "methods", "allow_headers", "max_age", "tail",
                 "vary", "echo_methods", "echo_headers", "memo", "forbidden")

    def __init__(self, options):
        self.any_origin = options.origins == ("*",)
        self.origins = frozenset(o.encode("ascii") for o in options.origins if o != "*")
        self.credentials = options.credentials
        self.echo_methods = "*" in options.methods and options.credentials
        self.echo_headers = "*" in options.headers and options.credentials
        self.methods = b"*" if "*" in options.methods else ", ".join(options.methods).encode("ascii")
        self.allow_headers = b"*" if "*" in options.headers else ", ".join(options.headers).encode("ascii")
        self.max_age = b"%d" % int(options.max_age)
        # What follows Access-Control-Allow-Origin on an actual response.
        tail = b""
        if options.credentials:
            tail += b"Access-Control-Allow-Credentials: true\r\n"
        if options.expose:
            tail += b"Access-Control-Expose-Headers: " + ", ".join(options.expose).encode("ascii") + b"\r\n"
        self.tail = tail
        self.vary = not (self.any_origin and not options.credentials)   # the answer depends on Origin
        self.memo = {}           # (id of the base RouteRules, origin or None) -> RouteRules
        self.forbidden = Preflight(403, b"", "Cross-origin requests from this origin are not allowed here.")

    # -- preflight -------------------------------------------------------------------------

    def allows(self, origin):
        """Whether `origin` (bytes or None) may use the host."""
        if origin is None:
            return False
        return self.any_origin or origin in self.origins

    def allow_origin(self, origin):
        """The Access-Control-Allow-Origin value for an allowed `origin`."""
        return b"*" if self.any_origin and not self.credentials else origin

    def preflight(self, method, headers):
        """A `Preflight` answer when the request is a CORS preflight, else None."""
        if method != b"OPTIONS":
            return None
        origin = _header_value(headers, b"origin")
        requested = _header_value(headers, b"access-control-request-method")
        if origin is None or requested is None:
            return None
        if not self.allows(origin):
            return self.forbidden
        methods = requested.strip() if self.echo_methods else self.methods
        lines = [b"Access-Control-Allow-Origin: ", self.allow_origin(origin),
                 b"\r\nAccess-Control-Allow-Methods: ", methods, b"\r\n"]
        allow_headers = self.allow_headers
        if self.echo_headers:
            allow_headers = (_header_value(headers, b"access-control-request-headers") or b"").strip()
        if allow_headers:
            lines += (b"Access-Control-Allow-Headers: ", allow_headers, b"\r\n")
        if self.credentials:
            lines.append(b"Access-Control-Allow-Credentials: true\r\n")
        lines += (b"Access-Control-Max-Age: ", self.max_age, b"\r\n",
                  b"Vary: Origin, Access-Control-Request-Method, Access-Control-Request-Headers\r\n")
        return Preflight(204, b"".join(lines))

    def local_lines(self, headers):
        """The CORS header lines for an answer the proxy makes itself for an actual request
        (a forward-auth denial or failure), so a cross-origin script can read its status."""
        if self.any_origin and not self.credentials:
            return b"Access-Control-Allow-Origin: *\r\n"
        origin = _header_value(headers, b"origin")
        if not self.allows(origin):
            return b"Vary: Origin\r\n"
        return b"Access-Control-Allow-Origin: " + origin + b"\r\n" + self.tail + b"Vary: Origin\r\n"

    # -- actual requests ---------------------------------------------------------------------

    def rules_for(self, rules, headers):
        """`rules` (the path's `RouteRules`, or None) with this policy's response headers for
        a request carrying `headers` (triples)."""
        if self.any_origin and not self.credentials:
            origin = b"*"                # the same answer for every client, with or without Origin
        else:
            origin = _header_value(headers, b"origin")
            if not self.allows(origin):
                origin = None
        key = (id(rules), origin)
        found = self.memo.get(key)
        if found is not None and found[0] is rules:
            return found[1]
        base = rules or _NO_RULES
        lines = b""
        if origin is not None:
            lines = b"Access-Control-Allow-Origin: " + self.allow_origin(origin) + b"\r\n" + self.tail
        if self.vary:
            lines += b"Vary: Origin\r\n"
        pairs = tuple(_pair(line + b"\r\n") for line in lines.split(b"\r\n") if line)
        combined = RouteRules.of(base.request, (base.response or _EMPTY).extended(_DROP, lines, pairs))
        if origin is None or origin in self.origins or origin == b"*" or len(self.memo) < _MEMO_LIMIT:
            self.memo[key] = (rules, combined)    # the base is kept, so its id is not reused
        return combined


def build_cors(options):
    """The route's `CorsPolicy`, or None when the host has no CORS."""
    return CorsPolicy(options) if options is not None else None
