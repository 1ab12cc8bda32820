"""Dashboard forms for proxy hosts, redirection hosts, 404 hosts and streams.

No rule of their own: each form turns its fields into the item the configuration file
would hold (docs/config-format.md) and parses it with `manager.configuration.schema`, so a
form error says what an import error would say; each error lands on the field it is about.
What needs the database (domains claimed by another host, a stream port in use) comes from
the model's `full_clean`, as for the importer.
"""
import re

import yaml
from django import forms
from django.core.exceptions import ValidationError

from manager.access.models import AccessList
from manager.accounts import access
from manager.certificates.models import Certificate
from manager.configuration import exporter, schema
from manager.lib import validators

from .models import DeadHost, Location, ProxyHost, RedirectionHost, Stream

LINES_HELP = "One per line."
UPSTREAMS_HELP = ("One per line: http://10.0.1.10:3000, optionally followed by weight=N (1-1000) "
                  "and, for https upstreams, verify=false (a CA certificate set in the configuration file is kept).")
HEADERS_HELP = ("YAML, as under headers: in the configuration file, e.g.\n"
                "request: {set: {X-Real-Host: example.com}, remove: [X-Debug]}\n"
                "response: {set: {X-Frame-Options: DENY}, add: {Link: '</a.css>; rel=preload'}, remove: [Server]}")


def lines(text):
    return [line.strip() for line in (text or "").replace(",", "\n").splitlines() if line.strip()]


def scalar(text):
    """A form's text as the YAML value it would be: whole numbers as numbers, else the text."""
    text = (text or "").strip()
    return int(text) if re.fullmatch(r"\d+", text) else text


def _yaml_text(value):
    return exporter.dump_yaml(value).strip() if value else ""


def field_for(field_of, path):
    """The form field of an error path: `field_of` maps path prefixes to fields, the longest
    matching prefix wins; None (a form-wide error) when none matches."""
    for prefix in sorted(field_of, key=len, reverse=True):
        if path == prefix or path.startswith((prefix + ".", prefix + "[")):
            return field_of[prefix]
    return None


def rate_limit_item(value, report):
    """The rate_limit item of a form's rate_* fields (`value(name)` gives a field's value); a
    key counted per header without the header's name goes to report(message)."""
    limit = {key: scalar(value(f"rate_{key}")) for key in ("requests", "per", "burst") if value(f"rate_{key}")}
    header = (value("rate_key_header") or "").strip()
    if value("rate_key") == "header":
        if header:
            limit["key"] = f"header:{header}"
        else:
            report("rate_limit.key: name the header to count requests by")
    return limit


class SchemaForm(forms.Form):
    """A form parsed as one item of `section` of a configuration document.

    Subclasses give `section`, `build(cleaned) -> item dict` and `FIELD_OF`: the form field of
    an error path (the longest matching prefix wins; anything else is a form-wide error)."""

    section = None
    FIELD_OF = {}
    YAML_FIELDS = ()
    SECTIONS = None
    MODEL_ERROR_FIELDS = {}

    def __init__(self, *args, instance=None, user=None, **kwargs):
        self.instance, self.user = instance, user
        super().__init__(*args, **kwargs)

    def _yaml(self, cleaned, field):
        text = cleaned.get(field) or ""
        if not text.strip():
            return None
        try:
            return schema.load_yaml(text)
        except schema.DocumentInvalid as exc:
            self.add_error(field, [str(error) for error in exc.errors])
            return None

    def field_of(self, path):
        return field_for(self.FIELD_OF, path)

    def place_error(self, path, message):
        """Put the schema's error about `path` (within the item) where it belongs."""
        self.add_error(self.field_of(path), message)

    def clean(self):
        cleaned = super().clean()
        if self.errors:
            return cleaned
        parsed = {field: self._yaml(cleaned, field) for field in self.YAML_FIELDS}
        if self.errors:
            return cleaned
        doc, errors = schema.parse_document({"version": schema.VERSION, self.section: [self.build(cleaned, parsed)]})
        prefix = f"{self.section}[0]"
        for error in errors:
            path = error.path[len(prefix):].lstrip(".") if error.path.startswith(prefix) else error.path
            self.place_error(path, f"{path}: {error.message}" if path else error.message)
        if self.errors:
            return cleaned
        self.item = doc[self.section][0]
        self.apply(self.item, cleaned)
        try:
            self.instance.full_clean(exclude=["owner"])
        except ValidationError as exc:
            for field, messages in exc.message_dict.items():
                field = self.MODEL_ERROR_FIELDS.get(field, field)
                self.add_error(field if field in self.fields else None, messages)
        return cleaned

    def apply(self, item, cleaned):
        for field in self.MODEL_FIELDS:
            setattr(self.instance, field, item[field])


def _choices_for(user, kind, model, current):
    """What a host may point at: the items of `kind` the user may see, plus the current one."""
    queryset = model.objects.none()
    if user is not None and access.allowed(user, kind, "view"):
        queryset = access.visible(user, kind, model.objects.all())
    if current is not None:
        queryset = queryset | model.objects.filter(pk=current.pk)
    return queryset.distinct()


def upstream_lines(exported):
    """Upstreams as an export writes them, as the lines of an upstreams field: `url weight=N
    verify=false` (a CA certificate is not shown, see `upstream_items`)."""
    result = []
    for entry in exported:
        if isinstance(entry, dict):
            options = [f"weight={entry['weight']}"] if "weight" in entry else []
            options += ["verify=false"] if entry.get("verify") is False else []
            entry = " ".join([entry["url"], *options])
        result.append(entry)
    return "\n".join(result)


def upstream_items(text, report, known_ca=None):
    """`url weight=N verify=false` lines as the configuration file's upstream items; an
    unknown option is given to `report(message)`. `known_ca` maps (scheme, host, port) of
    upstreams saved with a CA certificate (set through the configuration file, not shown in
    the form) to it: such an upstream keeps it unless its line says verify=false."""
    items = []
    for line in (text or "").splitlines():
        words = line.split()
        if not words:
            continue
        item = {"url": words[0]}
        for option in words[1:]:
            key, sep, value = option.partition("=")
            if not sep or key not in ("weight", "verify"):
                report(f"{line.strip()}: unknown option {option!r} (use weight=N or verify=false)")
                continue
            item[key] = scalar(value) if key == "weight" else {"true": True, "false": False}.get(value.lower(), value)
        if known_ca and item.get("verify") is not False:
            try:
                ca_pem = known_ca.get(validators.upstream_url(words[0]))
            except validators.Invalid:
                ca_pem = None                # the schema reports it
            if ca_pem:
                item["ca_pem"] = ca_pem
        items.append(item if len(item) > 1 else item["url"])
    return items


INHERIT = ("inherit", "Inherit the host's")
LOCATIONS_MARK = "locations-editor"       # posted by the rows editor (templates/hosts/_locations.html)
MAX_LOCATION_ROWS = 500


class LocationForm(forms.Form):
    """One row of the proxy host form's Locations section: a path prefix with its own
    upstreams and, each inheriting the host's until set here, cache, compression, rate
    limit and header rules. `item()` is the location as the configuration file writes it;
    the schema checks it with the host (`ProxyHostForm`)."""

    # Error path within the location -> field (the longest matching prefix wins).
    FIELD_OF = {"path": "path", "upstreams": "upstreams", "cache": "cache_mode", "cache.enabled": "cache_mode",
                "cache.default_ttl": "cache_ttl", "cache.stale_if_error": "cache_stale_if_error",
                "compression": "compression", "rate_limit": "rate_requests", "rate_limit.requests": "rate_requests",
                "rate_limit.per": "rate_per", "rate_limit.burst": "rate_burst", "rate_limit.key": "rate_key_header",
                "headers": "headers"}

    path = forms.CharField(required=False, label="Path", max_length=1100,
                           help_text="A path prefix, e.g. /api/; the longest matching prefix wins.")
    upstreams = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False, label="Upstreams",
                                help_text="Empty = the host's upstreams. " + UPSTREAMS_HELP)
    cache_mode = forms.ChoiceField(choices=[INHERIT, ("off", "Off"), ("on", "On")], initial="inherit", required=False,
                                   label="Cache")
    # (labels unlike the host's Cache fields, which tests and users find by label)
    cache_ttl = forms.CharField(required=False, label="Default TTL",
                                help_text="For responses that say nothing, e.g. 5m; empty = 0.")
    cache_stale_if_error = forms.CharField(required=False, label="Serve stale when the upstream fails",
                                           help_text="Up to this long past expiry, e.g. 1h; empty = never.")
    compression_mode = forms.ChoiceField(choices=[INHERIT, ("off", "Off"), ("on", "These encodings")],
                                         initial="inherit", required=False, label="Compression")
    compression = forms.MultipleChoiceField(choices=[(c, c) for c in schema.COMPRESSIONS], required=False,
                                            widget=forms.CheckboxSelectMultiple, label="Encodings",
                                            help_text="With none ticked, the same as Off.")
    rate_mode = forms.ChoiceField(
        choices=[INHERIT, ("custom", "Its own limit")], initial="inherit", required=False, label="Rate limit")
    rate_requests = forms.CharField(required=False, label="Rate limit: requests")
    rate_per = forms.CharField(required=False, label="Rate limit: per", help_text="e.g. 1s (the default), 1m.")
    rate_burst = forms.CharField(required=False, label="Rate limit: burst", help_text="Default 0.")
    rate_key = forms.ChoiceField(choices=[("ip", "Client IP address"), ("header", "A request header")], initial="ip",
                                 required=False, label="Rate limit: counted per")
    rate_key_header = forms.CharField(required=False, label="Rate limit: header name", help_text="e.g. X-Api-Key.")
    headers_mode = forms.ChoiceField(choices=[INHERIT, ("custom", "Its own rules")], initial="inherit",
                                     required=False, label="Header rules")
    headers = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False, label="Header rules (YAML)",
                              help_text="Replaces the host's rules on this path in both directions; empty = none. "
                                        + HEADERS_HELP)
    remove = forms.BooleanField(required=False, label="Remove this location (when saved)")

    MODES = {"cache_mode": "inherit", "compression_mode": "inherit", "rate_mode": "inherit", "headers_mode": "inherit"}

    def __init__(self, *args, index=0, **kwargs):
        self.index = index
        super().__init__(*args, prefix=f"locations-{index}", **kwargs)

    @staticmethod
    def initial_for(location):
        """The row's values for a location as the exporter writes it."""
        cache, compression = location.get("cache"), location.get("compression")
        limit, headers = location.get("rate_limit"), location.get("headers")
        key = (limit or {}).get("key", "ip")
        return {
            "path": location["path"], "upstreams": upstream_lines(location.get("upstreams", [])),
            "cache_mode": "inherit" if cache is None else "on" if cache["enabled"] else "off",
            "cache_ttl": cache["default_ttl"] if cache and cache["default_ttl"] != "0s" else "",
            "cache_stale_if_error": (cache or {}).get("stale_if_error", ""),
            "compression_mode": "inherit" if compression is None else "on" if compression else "off",
            "compression": list(compression or []),
            "rate_mode": "inherit" if limit is None else "custom",
            "rate_requests": limit["requests"] if limit else "", "rate_per": limit["per"] if limit else "",
            "rate_burst": limit["burst"] if limit else "",
            "rate_key": "header" if key.startswith("header:") else "ip",
            "rate_key_header": key[len("header:"):] if key.startswith("header:") else "",
            "headers_mode": "inherit" if headers is None else "custom", "headers": _yaml_text(headers),
        }

    def value(self, name):
        """The cleaned value of a field, or its default when it did not clean."""
        data = getattr(self, "cleaned_data", {})
        if data.get(name) or (name in data and name not in self.MODES):
            return data[name]
        return self.MODES.get(name, [] if name == "compression" else "")

    @property
    def removed(self):
        return self.is_bound and bool(self.value("remove"))

    @property
    def blank(self):
        """Nothing filled in (an added row left empty): left out, not an error."""
        return (not str(self.value("path")).strip() and not str(self.value("upstreams")).strip()
                and all(self.value(name) == "inherit" for name in self.MODES))

    def item(self, at, known_ca=None):
        """The location as the configuration file would hold it (the schema checks it); `at`
        is its path in the document, for the errors found here."""
        value = self.value
        location = {"path": value("path").strip()} if value("path").strip() else {}
        upstreams = upstream_items(value("upstreams"), lambda message: self.add_error("upstreams", f"{at}.upstreams: {message}"),
                                   known_ca)
        if upstreams:
            location["upstreams"] = upstreams
        if value("cache_mode") in ("on", "off"):
            location["cache"] = {"enabled": value("cache_mode") == "on"}
            if value("cache_ttl") or value("cache_mode") == "on":
                location["cache"]["default_ttl"] = scalar(value("cache_ttl") or "0s")
            if value("cache_stale_if_error"):
                location["cache"]["stale_if_error"] = scalar(value("cache_stale_if_error"))
        if value("compression_mode") == "off":
            location["compression"] = []
        elif value("compression_mode") == "on":
            location["compression"] = list(value("compression"))
        if value("rate_mode") == "custom":
            location["rate_limit"] = rate_limit_item(value, lambda message: self.add_error("rate_key_header",
                                                                                          f"{at}.{message}"))
        if value("headers_mode") == "custom":
            text = value("headers")
            try:
                location["headers"] = (schema.load_yaml(text) if text.strip() else None) or {}
            except schema.DocumentInvalid as exc:
                self.add_error("headers", [str(error) for error in exc.errors])
        return location

    def field_of(self, path):
        return field_for(self.FIELD_OF, path)

    def group(self, *names):
        return [self[name] for name in names]

    @property
    def override_groups(self):
        """(mode field, [detail fields]) per override, in the order the row shows them."""
        return [(self["cache_mode"], self.group("cache_ttl", "cache_stale_if_error")),
                (self["compression_mode"], self.group("compression")),
                (self["rate_mode"], self.group("rate_requests", "rate_per", "rate_burst", "rate_key", "rate_key_header")),
                (self["headers_mode"], self.group("headers"))]


class ProxyHostForm(SchemaForm):
    section = "proxy_hosts"
    YAML_FIELDS = ("headers",)
    SECTIONS = [
        ("Details", ["domains", "upstreams", "enabled", "websockets"]),
        ("Locations", []),             # rows: `location_rows`, templates/hosts/_locations.html
        ("SSL", ["certificate", "force_https", "http2", "hsts", "hsts_subdomains", "hsts_preload"]),
        ("Access", ["access_list", "forward_auth_url", "forward_auth_headers", "forward_auth_timeout"]),
        ("Load balancing", ["lb_policy", "sticky_cookie", "sticky_max_age", "health_check_path", "health_check_interval",
                            "health_check_timeout", "health_check_expect", "health_check_healthy",
                            "health_check_unhealthy", "passive_failures", "passive_window", "passive_cooldown"]),
        ("Traffic", ["connect_timeout", "response_timeout", "max_body_size"]),
        ("Cache", ["cache_enabled", "cache_ttl", "cache_stale_if_error"]),
        ("Compression", ["compression"]),
        ("Rate limit", ["rate_requests", "rate_per", "rate_burst", "rate_key", "rate_key_header"]),
        ("Headers", ["security_headers", "hide_upstream_identity", "cors_origins", "cors_methods", "cors_headers",
                     "cors_expose", "cors_credentials", "cors_max_age", "headers"]),
        ("Exploit blocking", ["block_exploits"]),
    ]
    FIELD_OF = {
        "domains": "domains", "upstreams": "upstreams", "enabled": "enabled", "websockets": "websockets",
        "headers": "headers", "compression": "compression",
        "load_balancing.policy": "lb_policy",
        "load_balancing.sticky": "sticky_cookie", "load_balancing.sticky.max_age": "sticky_max_age",
        "load_balancing.health_check": "health_check_path",
        **{f"load_balancing.health_check.{key}": f"health_check_{key}"
           for key in ("interval", "timeout", "expect", "healthy", "unhealthy")},
        "load_balancing.passive": "passive_failures",
        **{f"load_balancing.passive.{key}": f"passive_{key}" for key in ("window", "cooldown")},
        "timeouts.connect": "connect_timeout", "timeouts.response": "response_timeout",
        "max_body_size": "max_body_size", "cache": "cache_ttl", "cache.stale_if_error": "cache_stale_if_error",
        "cache.enabled": "cache_enabled",
        "rate_limit.requests": "rate_requests", "rate_limit.per": "rate_per", "rate_limit.key": "rate_key_header",
        "rate_limit.burst": "rate_burst", "block_exploits": "block_exploits",
        "security_headers": "security_headers", "hide_upstream_identity": "hide_upstream_identity",
        "cors": "cors_origins", "cors.methods": "cors_methods", "cors.headers": "cors_headers",
        "cors.expose": "cors_expose", "cors.credentials": "cors_credentials", "cors.max_age": "cors_max_age",
        "forward_auth": "forward_auth_url", "forward_auth.response_headers": "forward_auth_headers",
        "forward_auth.timeout": "forward_auth_timeout",
        **{f"ssl.{flag}": flag for flag in ("force_https", "http2", "hsts", "hsts_subdomains", "hsts_preload")},
    }
    MODEL_FIELDS = ("domains", "enabled", "upstreams", "lb_policy", "health_check", "passive_health", "lb_sticky",
                    "websockets", "connect_timeout", "response_timeout", "max_body_size", "force_https", "http2", "hsts",
                    "hsts_subdomains", "hsts_preload", "compression", "cache", "rate_limit", "headers",
                    "security_headers", "hide_upstream_identity", "cors", "forward_auth", "block_exploits")
    # Form fields -> key of the configuration item they fill (when any of them is filled in).
    HEALTH_FIELDS = {f"health_check_{key}": key for key in ("path", "interval", "timeout", "expect", "healthy", "unhealthy")}
    PASSIVE_FIELDS = {f"passive_{key}": key for key in ("failures", "window", "cooldown")}
    STICKY_FIELDS = {"sticky_cookie": "cookie", "sticky_max_age": "max_age"}
    FORWARD_AUTH_FIELDS = {"forward_auth_url": "url", "forward_auth_headers": "response_headers",
                           "forward_auth_timeout": "timeout"}
    CORS_FIELDS = {"cors_origins": "origins", "cors_methods": "methods", "cors_headers": "headers",
                   "cors_expose": "expose", "cors_credentials": "credentials", "cors_max_age": "max_age"}
    LIST_FIELDS = ("forward_auth_headers", "cors_origins", "cors_methods", "cors_headers", "cors_expose")

    domains = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), help_text="Exact names or *.wildcards. " + LINES_HELP)
    upstreams = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), help_text=UPSTREAMS_HELP)
    enabled = forms.BooleanField(required=False, initial=True)
    websockets = forms.BooleanField(required=False, label="WebSockets")
    certificate = forms.ModelChoiceField(queryset=Certificate.objects.none(), required=False, empty_label="(none: HTTP only)")
    force_https = forms.BooleanField(required=False, label="Force HTTPS")
    http2 = forms.BooleanField(required=False, label="HTTP/2")
    hsts = forms.BooleanField(required=False, label="HSTS")
    hsts_subdomains = forms.BooleanField(required=False, label="HSTS: include subdomains")
    hsts_preload = forms.BooleanField(required=False, label="HSTS: preload")
    access_list = forms.ModelChoiceField(
        queryset=AccessList.objects.none(), required=False, empty_label="(public)",
        help_text="IP rules and/or basic-auth users checked by the proxy before the request reaches the upstream.")
    forward_auth_url = forms.CharField(
        required=False, label="Forward auth: URL",
        help_text="Ask this service (Authelia, Authentik, oauth2-proxy) about every request first, e.g. "
                  "http://127.0.0.1:9091/api/verify; a 2xx answer lets the request through, a 3xx/4xx answer "
                  "(login redirect, 401) goes back to the client. Empty = off.")
    forward_auth_headers = forms.CharField(
        required=False, label="Forward auth: response headers",
        help_text="Headers of the auth answer passed on to the upstream, e.g. Remote-User, Remote-Groups. " + LINES_HELP)
    forward_auth_timeout = forms.CharField(required=False, label="Forward auth: timeout", help_text="Default 5s.")
    lb_policy = forms.ChoiceField(choices=ProxyHost.POLICY_CHOICES, initial="round_robin", label="Load balancing policy")
    sticky_cookie = forms.CharField(
        required=False, label="Sticky sessions: cookie name",
        help_text="Keep each client on the upstream it first got, named in this cookie (e.g. gh_sticky). Empty = off.")
    sticky_max_age = forms.CharField(required=False, label="Sticky sessions: max age",
                                     help_text="e.g. 1d; empty or 0s = until the browser closes.")
    health_check_path = forms.CharField(required=False, label="Health check path",
                                        help_text="e.g. /health; all health check fields empty = no active health check.")
    health_check_interval = forms.CharField(required=False, label="Health check interval", help_text="e.g. 10s (the default).")
    health_check_timeout = forms.CharField(required=False, label="Health check timeout",
                                           help_text="Default 2s (or the interval, when shorter).")
    health_check_expect = forms.CharField(required=False, label="Health check: expected statuses",
                                          help_text="A status (204) or a range (200-399, the default).")
    health_check_healthy = forms.CharField(required=False, label="Health check: healthy after",
                                           help_text="Consecutive successes that bring an upstream back (default 2).")
    health_check_unhealthy = forms.CharField(required=False, label="Health check: unhealthy after",
                                             help_text="Consecutive failures that take an upstream out (default 3).")
    passive_failures = forms.CharField(
        required=False, label="Passive checks: failures",
        help_text="Take an upstream out after this many failed requests (refused, reset, timed out, "
                  "invalid answer) within the window, e.g. 3. Empty = off.")
    passive_window = forms.CharField(required=False, label="Passive checks: window", help_text="Default 10s.")
    passive_cooldown = forms.CharField(required=False, label="Passive checks: cooldown",
                                       help_text="How long it stays out (default 30s).")
    connect_timeout = forms.CharField(initial="5s", help_text="e.g. 500ms, 5s, 1m.")
    response_timeout = forms.CharField(initial="1m")
    max_body_size = forms.CharField(required=False, label="Max body size", help_text="e.g. 512k, 100m, 1g; empty = unlimited.")
    cache_enabled = forms.BooleanField(required=False, label="Cache responses")
    cache_ttl = forms.CharField(required=False, label="Cache default TTL", help_text="For responses that say nothing, e.g. 5m; empty = 0.")
    cache_stale_if_error = forms.CharField(
        required=False, label="Serve stale on error",
        help_text="When the upstream fails (unreachable, timed out, 500/502/503/504), serve a cached copy up to this long past "
                  "its expiry, e.g. 1h; empty = never.")
    compression = forms.MultipleChoiceField(choices=[(c, c) for c in schema.COMPRESSIONS], required=False,
                                            widget=forms.CheckboxSelectMultiple)
    rate_requests = forms.CharField(required=False, label="Rate limit: requests", help_text="Empty = no rate limit.")
    rate_per = forms.CharField(required=False, label="Rate limit: per", help_text="e.g. 1s (the default), 1m.")
    rate_burst = forms.CharField(required=False, label="Rate limit: burst", help_text="Extra requests allowed at once (default 0).")
    rate_key = forms.ChoiceField(choices=[("ip", "Client IP address"), ("header", "A request header")], initial="ip",
                                 required=False, label="Rate limit: counted per")
    rate_key_header = forms.CharField(required=False, label="Rate limit: header name", help_text="e.g. X-Api-Key.")
    security_headers = forms.BooleanField(
        required=False, label="Security headers",
        help_text="Add X-Content-Type-Options: nosniff, X-Frame-Options: SAMEORIGIN, Referrer-Policy: "
                  "strict-origin-when-cross-origin and a restrictive Permissions-Policy to responses that lack them "
                  "(HSTS is under SSL).")
    hide_upstream_identity = forms.BooleanField(
        required=False, label="Hide upstream identity",
        help_text="Drop Server, X-Powered-By, X-AspNet-Version and X-AspNetMvc-Version from responses.")
    cors_origins = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 2}), required=False, label="CORS: allowed origins",
        help_text="e.g. https://app.example.com, or * for any; empty = no CORS handling. " + LINES_HELP)
    cors_methods = forms.CharField(required=False, label="CORS: methods", help_text="Default GET, HEAD, POST.")
    cors_headers = forms.CharField(required=False, label="CORS: request headers",
                                   help_text="Headers a browser may send, e.g. Content-Type, Authorization.")
    cors_expose = forms.CharField(required=False, label="CORS: exposed headers",
                                  help_text="Response headers scripts may read, e.g. X-Total-Count.")
    cors_credentials = forms.BooleanField(required=False, label="CORS: allow credentials (cookies)",
                                          help_text="Not with origin *: list the origins.")
    cors_max_age = forms.CharField(required=False, label="CORS: preflight max age", help_text="Default 10m.")
    headers = forms.CharField(widget=forms.Textarea(attrs={"rows": 4}), required=False, help_text=HEADERS_HELP)
    block_exploits = forms.BooleanField(required=False, label="Block common exploits")

    def __init__(self, *args, instance=None, user=None, **kwargs):
        instance = instance or ProxyHost()
        if instance.pk and "initial" not in kwargs:
            kwargs["initial"] = self.initial_for(instance)
        super().__init__(*args, instance=instance, user=user, **kwargs)
        self.location_errors = []          # errors about the locations that no row is the place for
        self.location_rows = self._location_rows()
        self.fields["certificate"].queryset = _choices_for(user, "certificates", Certificate, instance.certificate)
        self.fields["access_list"].queryset = _choices_for(user, "access_lists", AccessList, instance.access_list)

    @staticmethod
    def initial_for(host):
        """The form's values for a saved host: what an export writes (keys at their default
        left empty, the help texts name the defaults)."""
        cache, limit = host.cache, host.rate_limit
        exported = exporter._proxy_host(host)
        balancing = exported["load_balancing"]
        initial = {
            "domains": "\n".join(host.domains), "upstreams": upstream_lines(exporter.upstreams(host.upstreams)), "enabled": host.enabled,
            "websockets": host.websockets,
            "certificate": host.certificate_id, "force_https": host.force_https, "http2": host.http2, "hsts": host.hsts,
            "hsts_subdomains": host.hsts_subdomains, "hsts_preload": host.hsts_preload, "access_list": host.access_list_id,
            "lb_policy": host.lb_policy,
            "connect_timeout": exporter.duration(host.connect_timeout), "response_timeout": exporter.duration(host.response_timeout),
            "max_body_size": validators.format_size(host.max_body_size) if host.max_body_size is not None else "",
            "cache_enabled": bool(cache and cache["enabled"]), "cache_ttl": exporter.duration(cache["default_ttl"]) if cache else "",
            "cache_stale_if_error": exported.get("cache", {}).get("stale_if_error", ""),
            "compression": list(host.compression), "rate_requests": limit["requests"] if limit else "",
            "rate_per": exporter.duration(limit["per"]) if limit else "",
            "rate_key": "header" if limit and limit["key"].startswith("header:") else "ip",
            "rate_key_header": limit["key"][len("header:"):] if limit and limit["key"].startswith("header:") else "",
            "rate_burst": limit["burst"] if limit else "", "headers": _yaml_text(exporter._headers(host.headers)),
            "security_headers": host.security_headers, "hide_upstream_identity": host.hide_upstream_identity,
            "block_exploits": host.block_exploits,
        }
        for fields, values in ((ProxyHostForm.HEALTH_FIELDS, balancing.get("health_check")),
                               (ProxyHostForm.PASSIVE_FIELDS, balancing.get("passive")),
                               (ProxyHostForm.STICKY_FIELDS, balancing.get("sticky")),
                               (ProxyHostForm.FORWARD_AUTH_FIELDS, exported.get("forward_auth")),
                               (ProxyHostForm.CORS_FIELDS, exported.get("cors"))):
            for field, key in fields.items():
                value = (values or {}).get(key, "")
                initial[field] = ", ".join(value) if isinstance(value, list) else value
        return initial

    # -- locations: one `LocationForm` row each ------------------------------------------

    def _location_rows(self):
        """The rows: those posted (in page order; `locations-index` names them), else the saved
        host's locations as the exporter writes them."""
        self.locations_posted = self.is_bound and LOCATIONS_MARK in self.data
        if self.locations_posted:
            indexes = []
            posted = self.data.getlist("locations-index") if hasattr(self.data, "getlist") else []
            for index in posted:
                if index.isdecimal() and len(index) <= 6 and int(index) not in indexes:
                    indexes.append(int(index))
            if len(indexes) > MAX_LOCATION_ROWS:
                self.location_errors.append(f"at most {MAX_LOCATION_ROWS} locations")
                indexes = indexes[:MAX_LOCATION_ROWS]
            return [LocationForm(self.data, index=index) for index in indexes]
        exported = exporter._proxy_host(self.instance).get("locations", []) if self.instance.pk else []
        return [LocationForm(index=index, initial=LocationForm.initial_for(location))
                for index, location in enumerate(exported)]

    @property
    def next_location_index(self):
        return max((row.index for row in self.location_rows), default=-1) + 1

    @property
    def blank_location_row(self):
        """The empty row offered without JavaScript (in <noscript>; with it, "Add location")."""
        return LocationForm(index=self.next_location_index)

    @property
    def locations_invalid(self):
        return bool(self.location_errors) or any(row.errors for row in self.location_rows
                                                 if row.is_bound and not row.removed)

    def is_valid(self):
        valid = super().is_valid()
        return valid and not self.locations_invalid

    def _known_ca(self):
        """(scheme, host, port) -> CA certificate of the saved host's upstreams that have one."""
        if not self.instance.pk:
            return {}
        entries = list(self.instance.upstreams)
        for location in self.instance.locations.all():
            entries += location.upstreams
        return {(e["scheme"], e["host"], e["port"]): e["ca_pem"] for e in entries if e.get("ca_pem")}

    def _locations(self, known_ca):
        """The locations as the configuration file would hold them. A post without the rows
        editor (an older client) keeps the saved ones."""
        if not self.locations_posted:
            return exporter._proxy_host(self.instance).get("locations", []) if self.instance.pk else []
        self.active_rows, items = [], []
        for row in self.location_rows:
            row.is_valid()
            if row.removed or row.blank:
                continue
            items.append(row.item(f"locations[{len(items)}]", known_ca))
            self.active_rows.append(row)
        return items

    def place_error(self, path, message):
        match = re.match(r"locations\[(\d+)\]\.?(.*)$", path)
        if match and self.locations_posted and int(match[1]) < len(self.active_rows):
            row = self.active_rows[int(match[1])]
            row.add_error(row.field_of(match[2]), message)
        elif path == "locations" or path.startswith("locations["):
            self.location_errors.append(message)
        else:
            super().place_error(path, message)

    def _section(self, cleaned, fields):
        """{key: value} of the filled-in `fields` (form field -> item key), as YAML would hold
        them: None when none is filled in (the feature is off)."""
        values = {}
        for field, key in fields.items():
            value = cleaned.get(field)
            if value in ("", None, False):
                continue
            if field in self.LIST_FIELDS:
                values[key] = lines(value)
            elif isinstance(value, bool):
                values[key] = value
            else:
                values[key] = scalar(value)
        return values or None

    def build(self, cleaned, parsed):
        known_ca = self._known_ca()
        host = {"domains": lines(cleaned["domains"]), "enabled": cleaned["enabled"], "websockets": cleaned["websockets"],
                "upstreams": upstream_items(cleaned["upstreams"], lambda message: self.add_error("upstreams", message),
                                            known_ca),
                "load_balancing": {"policy": cleaned["lb_policy"]},
                "timeouts": {"connect": scalar(cleaned["connect_timeout"]), "response": scalar(cleaned["response_timeout"])},
                "ssl": {flag: cleaned[flag] for flag in ("force_https", "http2", "hsts", "hsts_subdomains", "hsts_preload")},
                "compression": list(cleaned["compression"]), "block_exploits": cleaned["block_exploits"],
                "security_headers": cleaned["security_headers"],
                "hide_upstream_identity": cleaned["hide_upstream_identity"]}
        for key, fields in (("health_check", self.HEALTH_FIELDS), ("passive", self.PASSIVE_FIELDS),
                            ("sticky", self.STICKY_FIELDS)):
            values = self._section(cleaned, fields)
            if values is not None:
                host["load_balancing"][key] = values
        for key, fields in (("cors", self.CORS_FIELDS), ("forward_auth", self.FORWARD_AUTH_FIELDS)):
            values = self._section(cleaned, fields)
            if values is not None:
                host[key] = values
        if cleaned["max_body_size"]:
            host["max_body_size"] = scalar(cleaned["max_body_size"])
        if cleaned["cache_enabled"] or cleaned["cache_ttl"] or cleaned["cache_stale_if_error"]:
            host["cache"] = {"enabled": cleaned["cache_enabled"], "default_ttl": scalar(cleaned["cache_ttl"] or "0s")}
            if cleaned["cache_stale_if_error"]:
                host["cache"]["stale_if_error"] = scalar(cleaned["cache_stale_if_error"])
        rate = rate_limit_item(cleaned.__getitem__, lambda message: self.add_error("rate_key_header", message))
        if rate:
            if "requests" not in rate:
                self.add_error("rate_requests", "required for a rate limit")
            host["rate_limit"] = rate
        for field in self.YAML_FIELDS:
            if parsed[field] is not None:
                host[field] = parsed[field]
        host["locations"] = self._locations(known_ca)
        return host

    def apply(self, item, cleaned):
        super().apply(item, cleaned)
        self.instance.certificate = cleaned["certificate"]
        self.instance.access_list = cleaned["access_list"]

    def save(self, owner=None):
        host = self.instance
        if host.pk is None:
            host.owner = owner
        host.save()
        host.locations.all().delete()
        for location in self.item["locations"]:
            Location.objects.create(proxy_host=host, **{key: location[key] for key in (
                "position", "path", "upstreams", "cache", "headers", "compression", "rate_limit")})
        return host


class RedirectionHostForm(SchemaForm):
    section = "redirection_hosts"
    FIELD_OF = {"domains": "domains", "to": "to", "code": "code", "preserve_path": "preserve_path", "enabled": "enabled"}
    MODEL_FIELDS = ("domains", "enabled", "to", "code", "preserve_path")

    domains = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), help_text="Exact names or *.wildcards. " + LINES_HELP)
    to = forms.CharField(label="Redirect to", help_text="An absolute URL, e.g. https://example.com")
    code = forms.TypedChoiceField(choices=RedirectionHost.CODE_CHOICES, coerce=int, initial=301)
    preserve_path = forms.BooleanField(required=False, initial=True, help_text="Append the request's path and query.")
    enabled = forms.BooleanField(required=False, initial=True)

    def __init__(self, *args, instance=None, user=None, **kwargs):
        instance = instance or RedirectionHost()
        if instance.pk and "initial" not in kwargs:
            kwargs["initial"] = {"domains": "\n".join(instance.domains), "to": instance.to, "code": instance.code,
                                 "preserve_path": instance.preserve_path, "enabled": instance.enabled}
        super().__init__(*args, instance=instance, user=user, **kwargs)

    def build(self, cleaned, parsed):
        return {"domains": lines(cleaned["domains"]), "to": cleaned["to"].strip(), "code": cleaned["code"],
                "preserve_path": cleaned["preserve_path"], "enabled": cleaned["enabled"]}

    def save(self, owner=None):
        if self.instance.pk is None:
            self.instance.owner = owner
        self.instance.save()
        return self.instance


class DeadHostForm(RedirectionHostForm):
    section = "dead_hosts"
    FIELD_OF = {"domains": "domains", "enabled": "enabled"}
    MODEL_FIELDS = ("domains", "enabled")

    to = code = preserve_path = None

    def __init__(self, *args, instance=None, user=None, **kwargs):
        instance = instance or DeadHost()
        if instance.pk and "initial" not in kwargs:
            kwargs["initial"] = {"domains": "\n".join(instance.domains), "enabled": instance.enabled}
        SchemaForm.__init__(self, *args, instance=instance, user=user, **kwargs)

    def build(self, cleaned, parsed):
        return {"domains": lines(cleaned["domains"]), "enabled": cleaned["enabled"]}


class StreamForm(RedirectionHostForm):
    section = "streams"
    FIELD_OF = {"listen": "listen", "protocol": "protocol", "upstream": "upstream", "enabled": "enabled"}
    MODEL_ERROR_FIELDS = {"upstream_host": "upstream", "upstream_port": "upstream"}
    MODEL_FIELDS = ("listen", "protocol", "upstream_host", "upstream_port", "enabled")

    domains = to = code = preserve_path = None
    listen = forms.CharField(label="Listen port", help_text="The port the proxy listens on (1-65535).")
    protocol = forms.ChoiceField(choices=Stream.PROTOCOL_CHOICES, initial="tcp")
    upstream = forms.CharField(help_text="host:port, e.g. 10.0.0.5:22 or [fd00::5]:22.")
    enabled = forms.BooleanField(required=False, initial=True)

    def __init__(self, *args, instance=None, user=None, **kwargs):
        instance = instance or Stream()
        if instance.pk and "initial" not in kwargs:
            kwargs["initial"] = {"listen": instance.listen, "protocol": instance.protocol, "enabled": instance.enabled,
                                 "upstream": validators.format_host_port(instance.upstream_host, instance.upstream_port)}
        SchemaForm.__init__(self, *args, instance=instance, user=user, **kwargs)

    def build(self, cleaned, parsed):
        return {"listen": scalar(cleaned["listen"]), "protocol": cleaned["protocol"], "upstream": cleaned["upstream"].strip(),
                "enabled": cleaned["enabled"]}

