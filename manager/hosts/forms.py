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
                  "and, for https upstreams, verify=false.")
LOCATIONS_HELP = ("YAML, as under locations: in the configuration file, e.g.\n"
                  "- path: /api\n  upstreams: [http://10.0.1.11:8080]\n  rate_limit: {requests: 10, per: 1s}")
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
        for prefix in sorted(self.FIELD_OF, key=len, reverse=True):
            if path == prefix or path.startswith((prefix + ".", prefix + "[")):
                return self.FIELD_OF[prefix]
        return None

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
            self.add_error(self.field_of(path), f"{path}: {error.message}" if path else error.message)
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


class ProxyHostForm(SchemaForm):
    section = "proxy_hosts"
    YAML_FIELDS = ("locations", "headers")
    SECTIONS = [
        ("Details", ["domains", "upstreams", "enabled", "websockets"]),
        ("Locations", ["locations"]),
        ("SSL", ["certificate", "force_https", "http2", "hsts", "hsts_subdomains", "hsts_preload"]),
        ("Access", ["access_list"]),
        ("Traffic", ["lb_policy", "health_check_path", "health_check_interval", "connect_timeout", "response_timeout",
                     "max_body_size", "cache_enabled", "cache_ttl", "compression", "rate_requests", "rate_per",
                     "rate_key", "rate_burst"]),
        ("Headers", ["headers"]),
        ("Exploit blocking", ["block_exploits"]),
    ]
    FIELD_OF = {
        "domains": "domains", "upstreams": "upstreams", "enabled": "enabled", "websockets": "websockets",
        "locations": "locations", "headers": "headers", "compression": "compression",
        "load_balancing.policy": "lb_policy", "load_balancing.health_check.path": "health_check_path",
        "load_balancing.health_check.interval": "health_check_interval",
        "timeouts.connect": "connect_timeout", "timeouts.response": "response_timeout",
        "max_body_size": "max_body_size", "cache": "cache_ttl",
        "rate_limit.requests": "rate_requests", "rate_limit.per": "rate_per", "rate_limit.key": "rate_key",
        "rate_limit.burst": "rate_burst", "block_exploits": "block_exploits",
        **{f"ssl.{flag}": flag for flag in ("force_https", "http2", "hsts", "hsts_subdomains", "hsts_preload")},
    }
    MODEL_FIELDS = ("domains", "enabled", "upstreams", "lb_policy", "health_check", "websockets", "connect_timeout",
                    "response_timeout", "max_body_size", "force_https", "http2", "hsts", "hsts_subdomains",
                    "hsts_preload", "compression", "cache", "rate_limit", "headers", "block_exploits")

    domains = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), help_text="Exact names or *.wildcards. " + LINES_HELP)
    upstreams = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), help_text=UPSTREAMS_HELP)
    enabled = forms.BooleanField(required=False, initial=True)
    websockets = forms.BooleanField(required=False, label="WebSockets")
    locations = forms.CharField(widget=forms.Textarea(attrs={"rows": 5}), required=False, help_text=LOCATIONS_HELP)
    certificate = forms.ModelChoiceField(queryset=Certificate.objects.none(), required=False, empty_label="(none: HTTP only)")
    force_https = forms.BooleanField(required=False, label="Force HTTPS")
    http2 = forms.BooleanField(required=False, label="HTTP/2")
    hsts = forms.BooleanField(required=False, label="HSTS")
    hsts_subdomains = forms.BooleanField(required=False, label="HSTS: include subdomains")
    hsts_preload = forms.BooleanField(required=False, label="HSTS: preload")
    access_list = forms.ModelChoiceField(
        queryset=AccessList.objects.none(), required=False, empty_label="(public)",
        help_text="IP rules and/or basic-auth users checked by the proxy before the request reaches the upstream.")
    lb_policy = forms.ChoiceField(choices=ProxyHost.POLICY_CHOICES, initial="round_robin", label="Load balancing policy")
    health_check_path = forms.CharField(required=False, label="Health check path", help_text="e.g. /health; empty = no active health check.")
    health_check_interval = forms.CharField(required=False, label="Health check interval", help_text="e.g. 10s (the default).")
    connect_timeout = forms.CharField(initial="5s", help_text="e.g. 500ms, 5s, 1m.")
    response_timeout = forms.CharField(initial="1m")
    max_body_size = forms.CharField(required=False, label="Max body size", help_text="e.g. 512k, 100m, 1g; empty = unlimited.")
    cache_enabled = forms.BooleanField(required=False, label="Cache responses")
    cache_ttl = forms.CharField(required=False, label="Cache default TTL", help_text="For responses that say nothing, e.g. 5m; empty = 0.")
    compression = forms.MultipleChoiceField(choices=[(c, c) for c in schema.COMPRESSIONS], required=False,
                                            widget=forms.CheckboxSelectMultiple)
    rate_requests = forms.CharField(required=False, label="Rate limit: requests", help_text="Empty = no rate limit.")
    rate_per = forms.CharField(required=False, label="Rate limit: per", help_text="e.g. 1s (the default), 1m.")
    rate_key = forms.CharField(required=False, label="Rate limit: key", help_text="ip (the default) or header:X-Api-Key.")
    rate_burst = forms.CharField(required=False, label="Rate limit: burst", help_text="Extra requests allowed at once (default 0).")
    headers = forms.CharField(widget=forms.Textarea(attrs={"rows": 4}), required=False, help_text=HEADERS_HELP)
    block_exploits = forms.BooleanField(required=False, label="Block common exploits")

    def __init__(self, *args, instance=None, user=None, **kwargs):
        instance = instance or ProxyHost()
        if instance.pk and "initial" not in kwargs:
            kwargs["initial"] = self.initial_for(instance)
        super().__init__(*args, instance=instance, user=user, **kwargs)
        self.fields["certificate"].queryset = _choices_for(user, "certificates", Certificate, instance.certificate)
        self.fields["access_list"].queryset = _choices_for(user, "access_lists", AccessList, instance.access_list)

    @staticmethod
    def initial_for(host):
        health, cache, limit = host.health_check, host.cache, host.rate_limit
        upstream_lines = []
        for entry in exporter.upstreams(host.upstreams):
            if isinstance(entry, dict):
                options = [f"weight={entry['weight']}"] if "weight" in entry else []
                options += ["verify=false"] if entry.get("verify") is False else []
                entry = " ".join([entry["url"], *options])
            upstream_lines.append(entry)
        locations = exporter._proxy_host(host).get("locations")
        return {
            "domains": "\n".join(host.domains), "upstreams": "\n".join(upstream_lines), "enabled": host.enabled,
            "websockets": host.websockets, "locations": _yaml_text(locations),
            "certificate": host.certificate_id, "force_https": host.force_https, "http2": host.http2, "hsts": host.hsts,
            "hsts_subdomains": host.hsts_subdomains, "hsts_preload": host.hsts_preload, "access_list": host.access_list_id,
            "lb_policy": host.lb_policy, "health_check_path": health["path"] if health else "",
            "health_check_interval": exporter.duration(health["interval"]) if health else "",
            "connect_timeout": exporter.duration(host.connect_timeout), "response_timeout": exporter.duration(host.response_timeout),
            "max_body_size": validators.format_size(host.max_body_size) if host.max_body_size is not None else "",
            "cache_enabled": bool(cache and cache["enabled"]), "cache_ttl": exporter.duration(cache["default_ttl"]) if cache else "",
            "compression": list(host.compression), "rate_requests": limit["requests"] if limit else "",
            "rate_per": exporter.duration(limit["per"]) if limit else "", "rate_key": limit["key"] if limit else "",
            "rate_burst": limit["burst"] if limit else "", "headers": _yaml_text(exporter._headers(host.headers)),
            "block_exploits": host.block_exploits,
        }

    def _upstream_items(self, text):
        """`url weight=N verify=false` lines as the configuration file's upstream items."""
        items = []
        for line in (text or "").splitlines():
            words = line.split()
            if not words:
                continue
            if len(words) == 1:
                items.append(words[0])
                continue
            item = {"url": words[0]}
            for option in words[1:]:
                key, sep, value = option.partition("=")
                if not sep or key not in ("weight", "verify"):
                    self.add_error("upstreams", f"{line.strip()}: unknown option {option!r} (use weight=N or verify=false)")
                    continue
                item[key] = scalar(value) if key == "weight" else {"true": True, "false": False}.get(value.lower(), value)
            items.append(item)
        return items

    def build(self, cleaned, parsed):
        host = {"domains": lines(cleaned["domains"]), "enabled": cleaned["enabled"], "websockets": cleaned["websockets"],
                "upstreams": self._upstream_items(cleaned["upstreams"]),
                "load_balancing": {"policy": cleaned["lb_policy"]},
                "timeouts": {"connect": scalar(cleaned["connect_timeout"]), "response": scalar(cleaned["response_timeout"])},
                "ssl": {flag: cleaned[flag] for flag in ("force_https", "http2", "hsts", "hsts_subdomains", "hsts_preload")},
                "compression": list(cleaned["compression"]), "block_exploits": cleaned["block_exploits"]}
        if cleaned["health_check_path"] or cleaned["health_check_interval"]:
            check = {"path": cleaned["health_check_path"] or "/"}
            if cleaned["health_check_interval"]:
                check["interval"] = scalar(cleaned["health_check_interval"])
            host["load_balancing"]["health_check"] = check
        if cleaned["max_body_size"]:
            host["max_body_size"] = scalar(cleaned["max_body_size"])
        if cleaned["cache_enabled"] or cleaned["cache_ttl"]:
            host["cache"] = {"enabled": cleaned["cache_enabled"], "default_ttl": scalar(cleaned["cache_ttl"] or "0s")}
        rate = {key: scalar(cleaned[f"rate_{key}"]) for key in ("requests", "per", "key", "burst") if cleaned[f"rate_{key}"]}
        if rate:
            if "requests" not in rate:
                self.add_error("rate_requests", "required for a rate limit")
            host["rate_limit"] = rate
        for field in self.YAML_FIELDS:
            if parsed[field] is not None:
                host[field] = parsed[field]
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

