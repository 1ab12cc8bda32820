"""Read a configuration document (docs/config-format.md) into normalized data.

`load_yaml(text)` parses YAML safely; `parse_document(data)` checks every key and value
and returns `(document, errors)`. It never stops at the first problem: each error carries
the path of the value it is about (`proxy_hosts[2].upstreams[0]`). It is pure (no
database); the checks that need the database (references when merging, keys kept from
existing certificates) live in `importer`.

The normalized document holds what the models store (see manager/hosts/models.py):
durations in seconds (float), sizes in bytes, upstreams as {scheme, host, port, weight},
domains as lower-case ASCII. Every top-level item keeps its path under "at".
"""
import re
from dataclasses import dataclass

import yaml
from django.core.exceptions import ValidationError
from django.core.validators import validate_email

from manager.certificates import dns
from manager.lib import validators
from manager.lib.validators import Invalid

VERSION = 1
SECTIONS = ("settings", "access_lists", "dns_providers", "certificates", "proxy_hosts", "redirection_hosts", "dead_hosts", "streams")
HOST_SECTIONS = ("proxy_hosts", "redirection_hosts", "dead_hosts")

DEFAULT_SITE_ACTIONS = ("404", "444", "redirect", "html", "welcome")
DEFAULT_ACME_DIRECTORY = "https://acme-v02.api.letsencrypt.org/directory"
LB_POLICIES = ("round_robin", "least_conn", "ip_hash", "random", "first")
COMPRESSIONS = ("gzip", "br", "zstd")
REDIRECT_CODES = (301, 302, 307, 308)
PROVIDERS = ("letsencrypt", "custom")
CHALLENGES = ("http", "dns")
MAX_WEIGHT = 1000

SETTINGS_KEYS = ("default_site", "acme", "tls", "trusted_proxies", "cache")
TLS_FALLBACKS = ("self_signed", "reject")
UPSTREAM_KEYS = ("url", "weight", "verify", "ca_pem")
ACCESS_LIST_KEYS = ("name", "satisfy", "pass_auth", "users", "rules")
CERTIFICATE_KEYS = ("name", "provider", "domains", "challenge", "dns_provider", "certificate_pem", "key_pem", "chain_pem")
DNS_PROVIDER_KEYS = ("name", "kind", "api_token", "server", "port", "key_name", "key_secret", "algorithm",
                     "propagation_seconds")
# Per kind: its keys (besides name and kind) and their defaults; secrets default to None
# ("keep the one the provider of that name already has").
DNS_KIND_KEYS = {
    "cloudflare": {"api_token": None, "propagation_seconds": 30},
    "rfc2136": {"server": None, "port": 53, "key_name": None, "key_secret": None, "algorithm": "hmac-sha256",
                "propagation_seconds": 30},
}
DNS_REQUIRED = {"cloudflare": (), "rfc2136": ("server", "key_name")}
PROXY_HOST_KEYS = ("domains", "enabled", "upstreams", "load_balancing", "websockets", "timeouts", "max_body_size",
                   "ssl", "access_list", "forward_auth", "compression", "cache", "rate_limit", "headers",
                   "security_headers", "hide_upstream_identity", "cors", "block_exploits", "locations")
LOCATION_KEYS = ("path", "upstreams", "cache", "headers", "compression", "rate_limit")
REDIRECTION_HOST_KEYS = ("domains", "enabled", "to", "code", "preserve_path")
DEAD_HOST_KEYS = ("domains", "enabled")
STREAM_KEYS = ("listen", "protocol", "upstream", "enabled")

# Traffic features (issue #6). Every default below is what a document that leaves the key
# out gets, so documents written before these keys existed import unchanged; the exporter
# writes a key only when it differs from its default (older exports stay byte-identical).
LOAD_BALANCING_KEYS = ("policy", "sticky", "health_check", "passive")
HEALTH_CHECK_KEYS = ("path", "interval", "timeout", "expect", "healthy", "unhealthy")
HEALTH_CHECK_DEFAULTS = {"path": "/", "interval": 10.0, "timeout": 2.0, "expect": [200, 399], "healthy": 2,
                         "unhealthy": 3}
PASSIVE_KEYS = ("failures", "window", "cooldown")
PASSIVE_DEFAULTS = {"failures": 3, "window": 10.0, "cooldown": 30.0}
STICKY_KEYS = ("cookie", "max_age")
STICKY_DEFAULTS = {"cookie": "gh_sticky", "max_age": 0.0}
CACHE_KEYS = ("enabled", "default_ttl", "stale_if_error")
CACHE_DEFAULTS = {"enabled": True, "default_ttl": 0.0, "stale_if_error": 0.0}
CORS_KEYS = ("origins", "methods", "headers", "expose", "credentials", "max_age")
CORS_DEFAULTS = {"methods": ["GET", "HEAD", "POST"], "headers": [], "expose": [], "credentials": False,
                 "max_age": 600.0}
FORWARD_AUTH_KEYS = ("url", "response_headers", "timeout")
FORWARD_AUTH_DEFAULTS = {"response_headers": [], "timeout": 5.0}
SETTINGS_CACHE_KEYS = ("memory_bytes", "disk_bytes")
SETTINGS_CACHE_DEFAULTS = {"memory_bytes": 64 * 1024 * 1024, "disk_bytes": 0}
MIN_CACHE_BYTES = 1024 * 1024
MAX_THRESHOLD = 100
# Upper bounds the engine's snapshot parser enforces too (a value the manager accepted must
# never make the engine refuse the whole snapshot).
DAY, YEAR = 86400.0, 365 * 86400.0
MAX_CACHE_MEMORY, MAX_CACHE_DISK = 1 << 40, 1 << 44
MAX_CACHE_TTL = 10 * YEAR
MAX_FORWARD_AUTH_TIMEOUT = 300.0
MAX_RATE_PERIOD = 10 * YEAR


@dataclass(frozen=True)
class ConfigError:
    path: str
    message: str

    def __str__(self):
        return f"{self.path}: {self.message}" if self.path else self.message


class DocumentInvalid(Exception):
    """The document has errors; nothing was changed. `errors` lists every one."""

    def __init__(self, errors):
        self.errors = list(errors)
        super().__init__("\n".join(str(error) for error in self.errors))


# -- YAML -----------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key written twice in one mapping."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            if isinstance(key, (str, int, float, bool)):
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text):
    """Parse YAML text (safe tags only); a syntax error raises DocumentInvalid naming its line."""
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        problem = " ".join(part for part in (exc.context, exc.problem) if part)
        raise DocumentInvalid([ConfigError(where, f"YAML syntax error: {problem}")]) from None
    except yaml.YAMLError as exc:
        raise DocumentInvalid([ConfigError("YAML", f"YAML error: {exc}")]) from None


# -- scalar parsers: value -> canonical value, or raise Invalid ---------------------------


def describe(value):
    """How a wrong value is named in an error: its YAML type and the value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"number {value!r}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"{type(value).__name__} {value!r}"


def boolean(value):
    if not isinstance(value, bool):
        raise Invalid(f"expected true or false, got {describe(value)}")
    return value


def text(value):
    if not isinstance(value, str):
        raise Invalid(f"expected a string, got {describe(value)}")
    return value


def name(value, max_length=100):
    if not isinstance(value, str) or not value.strip():
        raise Invalid(f"expected a non-empty name, got {describe(value)}")
    if len(value) > max_length:
        raise Invalid(f"name longer than {max_length} characters")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise Invalid(f"name {value!r} contains control characters")
    return value


def choice(options):
    def parse(value):
        if value not in options or isinstance(value, bool):
            raise Invalid(f"expected one of {', '.join(map(str, options))}, got {describe(value)}")
        return value
    return parse


def url(value):
    """An absolute http(s) URL (validators.web_url) that fits the database column."""
    value = validators.web_url(value)
    if len(value) > 2048:
        raise Invalid("URL longer than 2048 characters")
    return value


def positive_duration(value):
    seconds = validators.duration(value)
    if seconds <= 0:
        raise Invalid(f"duration {value!r} must be more than zero")
    return seconds


def url_path(value):
    if not isinstance(value, str) or not value.startswith("/"):
        raise Invalid(f"expected a path starting with /, got {describe(value)}")
    if len(value) > 1024:
        raise Invalid("path longer than 1024 characters")
    if any(ord(ch) <= 0x20 or ord(ch) == 0x7F for ch in value):
        raise Invalid(f"path {value!r} contains spaces or control characters")
    return value


def email(value):
    if not isinstance(value, str):
        raise Invalid(f"expected an email address, got {describe(value)}")
    try:
        validate_email(value)
        if len(value) > 254:
            raise ValidationError("too long")
    except ValidationError:
        raise Invalid(f"invalid email address {value!r}") from None
    return value


def pem(value):
    """PEM text with Unix line ends and exactly one final newline (parsed elsewhere)."""
    if not isinstance(value, str):
        raise Invalid(f"expected PEM text, got {describe(value)}")
    return value.replace("\r\n", "\n").strip() + "\n"


def rate_limit_key(value):
    if value == "ip":
        return "ip"
    if isinstance(value, str) and value.startswith("header:"):
        return "header:" + validators.header_name(value[len("header:"):])
    raise Invalid(f"expected ip or header:<Header-Name>, got {describe(value)}")


def default_site_action(value):
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    return choice(DEFAULT_SITE_ACTIONS)(value)


# -- paths ----------------------------------------------------------------------------


def _key(path, key):
    return f"{path}.{key}" if path else str(key)


def _index(path, index):
    return f"{path}[{index}]"


class _Reader:
    """Walks a document, collecting every error with its path."""

    def __init__(self):
        self.errors = []

    def error(self, path, message):
        self.errors.append(ConfigError(path, message))

    def mapping(self, value, path, keys, required=()):
        """`value` if it is a mapping; reports unknown and missing keys."""
        if not isinstance(value, dict):
            self.error(path, f"expected a mapping, got {describe(value)}")
            return None
        for key in value:
            if key not in keys:
                self.error(_key(path, key), f"unknown key (expected one of: {', '.join(keys)})")
        for key in required:
            if value.get(key) is None:
                self.error(_key(path, key), "required key is missing")
        return value

    def section(self, mapping, key, path, keys, required=()):
        """(mapping[key] checked by mapping(), its path); the value is None when the key is
        absent or null, or holds no mapping."""
        where = _key(path, key)
        if mapping.get(key) is None:
            return None, where
        return self.mapping(mapping[key], where, keys, required), where

    def errors_at(self, path):
        """Errors already reported at `path` or below it."""
        return [e for e in self.errors if e.path == path or e.path.startswith((path + ".", path + "["))]

    def field(self, mapping, key, path, parse, default=None):
        """parse(mapping[key]); an absent or null value gives `default`, as does an invalid one."""
        value = mapping.get(key)
        if value is None:
            return default
        try:
            return parse(value)
        except Invalid as exc:
            self.error(_key(path, key), str(exc))
            return default

    def items(self, mapping, key, path):
        """[(item, item_path)] of the list at mapping[key]; absent or null is an empty list."""
        value = mapping.get(key)
        where = _key(path, key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.error(where, f"expected a list, got {describe(value)}")
            return []
        return [(item, _index(where, i)) for i, item in enumerate(value)]

    def scalar_list(self, mapping, key, path, parse):
        """A list of scalars, each parsed; invalid items are left out (and reported)."""
        result = []
        for item, where in self.items(mapping, key, path):
            try:
                result.append(parse(item))
            except Invalid as exc:
                self.error(where, str(exc))
        return result


# -- the document ---------------------------------------------------------------------


def parse_document(data):
    """(normalized document or None, [ConfigError]) for the parsed YAML `data`."""
    r = _Reader()
    if not isinstance(data, dict):
        r.error("", f"the document must be a mapping with version: {VERSION} and the sections "
                    f"{', '.join(SECTIONS)}; got {describe(data)}")
        return None, r.errors
    r.mapping(data, "", ("version",) + SECTIONS)
    if "version" not in data:
        r.error("version", f"required key is missing (write version: {VERSION})")
    elif data["version"] != VERSION or isinstance(data["version"], bool):
        r.error("version", f"unsupported version {data['version']!r} (this Gatehouse reads version {VERSION})")

    doc = {
        "settings": _settings(r, data["settings"], "settings") if data.get("settings") is not None else None,
        "access_lists": [_access_list(r, item, at) for item, at in r.items(data, "access_lists", "")],
        "dns_providers": [_dns_provider(r, item, at) for item, at in r.items(data, "dns_providers", "")],
        "certificates": [_certificate(r, item, at) for item, at in r.items(data, "certificates", "")],
        "proxy_hosts": [_proxy_host(r, item, at) for item, at in r.items(data, "proxy_hosts", "")],
        "redirection_hosts": [_redirection_host(r, item, at) for item, at in r.items(data, "redirection_hosts", "")],
        "dead_hosts": [_dead_host(r, item, at) for item, at in r.items(data, "dead_hosts", "")],
        "streams": [_stream(r, item, at) for item, at in r.items(data, "streams", "")],
    }
    for section in SECTIONS[1:]:
        doc[section] = [item for item in doc[section] if item is not None]
    _check_unique(r, doc["access_lists"], "name", "access list")
    _check_unique(r, doc["dns_providers"], "name", "DNS provider")
    _check_unique(r, doc["certificates"], "name", "certificate")
    _check_streams_unique(r, doc["streams"])
    _check_domains_unique(r, doc)
    return doc, r.errors


def _settings(r, value, at):
    m = r.mapping(value, at, SETTINGS_KEYS)
    if m is None:
        return None
    result = {"default_site_action": "welcome", "default_site_to": "", "default_site_body": "",
              "acme_email": "", "acme_directory": DEFAULT_ACME_DIRECTORY, "acme_ca_bundle": "",
              "tls_fallback": "self_signed", "trusted_proxies": []}
    site, where = r.section(m, "default_site", at, ("action", "to", "body"), required=("action",))
    if site is not None:
        action = r.field(site, "action", where, default_site_action)
        result["default_site_action"] = action or "welcome"
        for needed_by, key, parse in (("redirect", "to", url), ("html", "body", text)):
            if action == needed_by:
                if site.get(key) is None:
                    r.error(_key(where, key), f"required when action is {needed_by}")
                result[f"default_site_{key}"] = r.field(site, key, where, parse, "")
            elif site.get(key) is not None:
                r.error(_key(where, key), f"only allowed when action is {needed_by}")
    acme, where = r.section(m, "acme", at, ("email", "directory", "ca_bundle"))
    if acme is not None:
        result["acme_email"] = r.field(acme, "email", where, email, "")
        result["acme_directory"] = r.field(acme, "directory", where, url, DEFAULT_ACME_DIRECTORY)
        result["acme_ca_bundle"] = r.field(acme, "ca_bundle", where, absolute_path, "")
    tls, where = r.section(m, "tls", at, ("fallback",))
    if tls is not None:
        result["tls_fallback"] = r.field(tls, "fallback", where, choice(TLS_FALLBACKS), "self_signed")
    result["trusted_proxies"] = r.scalar_list(m, "trusted_proxies", at, validators.cidr)
    result["cache_memory_bytes"] = SETTINGS_CACHE_DEFAULTS["memory_bytes"]
    result["cache_disk_bytes"] = SETTINGS_CACHE_DEFAULTS["disk_bytes"]
    cache, where = r.section(m, "cache", at, SETTINGS_CACHE_KEYS)
    if cache is not None:
        result["cache_memory_bytes"] = r.field(cache, "memory_bytes", where, cache_memory_size,
                                               SETTINGS_CACHE_DEFAULTS["memory_bytes"])
        result["cache_disk_bytes"] = r.field(cache, "disk_bytes", where, cache_disk_size,
                                             SETTINGS_CACHE_DEFAULTS["disk_bytes"])
    return result


def cache_memory_size(value):
    total = validators.size(value)
    if total < MIN_CACHE_BYTES:
        raise Invalid(f"the memory cache needs at least 1m, got {value!r}")
    if total > MAX_CACHE_MEMORY:
        raise Invalid(f"the memory cache is at most 1024g, got {value!r}")
    return total


def cache_disk_size(value):
    total = validators.size(value)
    if 0 < total < MIN_CACHE_BYTES:
        raise Invalid(f"the disk cache is 0 (off) or at least 1m, got {value!r}")
    if total > MAX_CACHE_DISK:
        raise Invalid(f"the disk cache is at most 16384g, got {value!r}")
    return total


def duration_at_most(limit, positive=False):
    """A duration (more than zero when `positive`) no longer than `limit` seconds."""
    def parse(value):
        seconds = positive_duration(value) if positive else validators.duration(value)
        if seconds > limit:
            raise Invalid(f"duration {value!r} is longer than {validators.format_duration(limit)}")
        return seconds
    return parse


def _access_list(r, value, at):
    m = r.mapping(value, at, ACCESS_LIST_KEYS, required=("name",))
    if m is None:
        return None
    users, usernames = [], set()
    for item, where in r.items(m, "users", at):
        user = r.mapping(item, where, ("username", "password", "password_hash"), required=("username",))
        if user is None:
            continue
        username = r.field(user, "username", where, lambda v: name(v, 150))
        if username in usernames:
            r.error(_key(where, "username"), f"user {username!r} is listed twice")
        usernames.add(username)
        has_password, has_hash = user.get("password") is not None, user.get("password_hash") is not None
        if has_password == has_hash:
            r.error(where, "give exactly one of password (plain text, hashed on import) or password_hash")
            continue
        if has_password:
            users.append({"username": username, "password": r.field(user, "password", where, text)})
        else:
            users.append({"username": username, "password_hash": r.field(user, "password_hash", where, password_hash)})
    rules = []
    for item, where in r.items(m, "rules", at):
        if not isinstance(item, dict) or len(item) != 1 or next(iter(item)) not in ("allow", "deny"):
            r.error(where, f"expected a rule like {{allow: 192.168.1.0/24}} or {{deny: all}}, got {describe(item)}")
            continue
        (action, source), = item.items()
        try:
            rules.append({"action": action, "source": validators.access_source(source)})
        except Invalid as exc:
            r.error(_key(where, action), str(exc))
    return {
        "at": at,
        "name": r.field(m, "name", at, name),
        "satisfy": r.field(m, "satisfy", at, choice(("any", "all")), "any"),
        "pass_auth": r.field(m, "pass_auth", at, boolean, False),
        "users": users,
        "rules": rules,
    }


def password_hash(value):
    from django.contrib.auth.hashers import identify_hasher

    if not isinstance(value, str):
        raise Invalid(f"expected a Django password hash, got {describe(value)}")
    try:
        identify_hasher(value)
    except ValueError:
        raise Invalid("not a Django password hash (like pbkdf2_sha256$...); use password: for plain text") from None
    return value


def _dns_field(kind, field):
    def parse(value):
        if field not in ("port", "propagation_seconds") and not isinstance(value, str):
            secret = field in dns.SECRETS[kind]
            raise Invalid("expected a string" + ("" if secret else f", got {describe(value)}"))
        try:
            return dns.check_field(kind, field, value)
        except ValueError as exc:
            raise Invalid(str(exc)) from None
    return parse


def _dns_provider(r, value, at):
    m = r.mapping(value, at, DNS_PROVIDER_KEYS, required=("name", "kind"))
    if m is None:
        return None
    kind = r.field(m, "kind", at, choice(dns.KINDS))
    provider = {"at": at, "name": r.field(m, "name", at, name), "kind": kind}
    if kind is None:
        return provider
    keys = DNS_KIND_KEYS[kind]
    for key in DNS_PROVIDER_KEYS[2:]:
        if key not in keys and m.get(key) is not None:
            r.error(_key(at, key), f"only for kind {' or '.join(k for k in dns.KINDS if key in DNS_KIND_KEYS[k])}")
    for key, default in keys.items():
        provider[key] = r.field(m, key, at, _dns_field(kind, key), default)
    for key in DNS_REQUIRED[kind]:
        if m.get(key) is None:
            r.error(_key(at, key), f"required for kind {kind}")
    return provider


def _certificate(r, value, at):
    m = r.mapping(value, at, CERTIFICATE_KEYS, required=("name", "provider"))
    if m is None:
        return None
    provider = r.field(m, "provider", at, choice(PROVIDERS))
    cert = {
        "at": at,
        "name": r.field(m, "name", at, name),
        "provider": provider,
        "domains": r.scalar_list(m, "domains", at, validators.hostname),
        "challenge": r.field(m, "challenge", at, choice(CHALLENGES), "http"),
        "dns_provider": r.field(m, "dns_provider", at, name),
        "certificate_pem": r.field(m, "certificate_pem", at, pem),
        "key_pem": r.field(m, "key_pem", at, pem),
        "chain_pem": r.field(m, "chain_pem", at, pem, ""),
    }
    if provider == "custom" and m.get("certificate_pem") is None:
        r.error(_key(at, "certificate_pem"), "required for a custom certificate")
    if cert["certificate_pem"] is None:
        for key in ("key_pem", "chain_pem"):
            if m.get(key) is not None:
                r.error(_key(at, key), "only allowed together with certificate_pem")
    else:
        leaf = _check_pems(r, cert, at)
        if leaf is not None and not m.get("domains"):
            cert["domains"] = sorted(validators.certificate_names(leaf))
        elif leaf is not None and cert["domains"] and provider == "custom":
            # (A Let's Encrypt certificate's domains say what to request next; its current
            # PEM may predate a change of them.)
            covered = validators.certificate_names(leaf)
            for domain in cert["domains"]:
                if not validators.name_covered(domain, covered):
                    r.error(_key(at, "domains"),
                            f"{domain} is not covered by the certificate (it covers {', '.join(covered) or 'no names'})")
    if provider == "letsencrypt" and not m.get("domains"):
        r.error(_key(at, "domains"), "a Let's Encrypt certificate needs at least one domain")
    if provider == "custom":
        for key in ("challenge", "dns_provider"):
            if m.get(key) is not None:
                r.error(_key(at, key), "only for letsencrypt certificates")
    elif cert["challenge"] == "dns" and m.get("dns_provider") is None:
        r.error(_key(at, "dns_provider"), "required when challenge is dns")
    elif cert["challenge"] == "http" and m.get("dns_provider") is not None:
        r.error(_key(at, "dns_provider"), "only allowed with challenge: dns")
    if provider == "letsencrypt" and cert["challenge"] == "http":
        for domain in cert["domains"]:
            if domain.startswith("*."):
                r.error(_key(at, "domains"), f"{domain}: wildcard names can only be validated with DNS-01 "
                                             "(challenge: dns and a dns_provider)")
    return cert


def _check_pems(r, cert, at):
    """The certificate (and chain) parse and the key, when given, matches; returns the leaf."""
    try:
        leaf = validators.certificate_chain(cert["certificate_pem"])[0]
    except Invalid as exc:
        r.error(_key(at, "certificate_pem"), str(exc))
        return None
    if cert["chain_pem"]:
        try:
            validators.certificate_chain(cert["chain_pem"])
        except Invalid as exc:
            r.error(_key(at, "chain_pem"), str(exc))
    if cert["key_pem"] is not None:
        try:
            validators.certificate_with_key(cert["certificate_pem"], cert["key_pem"])
        except Invalid as exc:
            r.error(_key(at, "key_pem"), str(exc))
    return leaf


def _domains(r, m, at):
    domains = []
    for item, where in r.items(m, "domains", at):
        try:
            domain = validators.hostname(item)
        except Invalid as exc:
            r.error(where, str(exc))
            continue
        if domain in domains:
            r.error(where, f"{domain} is listed twice")
            continue
        domains.append(domain)
    if m.get("domains") is not None and not domains and not r.errors_at(_key(at, "domains")):
        r.error(_key(at, "domains"), "at least one domain name is required")
    return domains


def _ca_pem(value):
    """One or more CA certificates (PEM text) to verify an https upstream with."""
    validators.certificate_chain(value)
    return value.strip() + "\n"


def absolute_path(value):
    if not isinstance(value, str) or not value.startswith("/"):
        raise Invalid(f"expected an absolute file path, got {describe(value)}")
    return value


def _upstream(value):
    scheme, host, port = validators.upstream_url(value)
    return {"scheme": scheme, "host": host, "port": port, "weight": 1}


def _upstreams(r, m, at):
    """Canonical upstreams; `verify` (default true) and `ca_pem` are stored only when set
    otherwise, and only for https upstreams."""
    result = []
    for item, where in r.items(m, "upstreams", at):
        if isinstance(item, dict):
            entry = r.mapping(item, where, UPSTREAM_KEYS, required=("url",))
            if entry is None or entry.get("url") is None:
                continue
            upstream = r.field(entry, "url", where, _upstream)
            weight = r.field(entry, "weight", where, lambda v: validators.positive_int(v, "weight", 1, MAX_WEIGHT), 1)
            verify = r.field(entry, "verify", where, boolean, True)
            ca_pem = r.field(entry, "ca_pem", where, _ca_pem, None)
            if upstream is None:
                continue
            if upstream["scheme"] != "https":
                for key in ("verify", "ca_pem"):
                    if entry.get(key) is not None:
                        r.error(_key(where, key), "only for https upstreams")
            if verify is False and ca_pem is not None:
                r.error(_key(where, "ca_pem"), "not used when verify is false")
            upstream["weight"] = weight
            if verify is False:
                upstream["verify"] = False
            if ca_pem is not None:
                upstream["ca_pem"] = ca_pem
            result.append(upstream)
        else:
            try:
                result.append(_upstream(item))
            except Invalid as exc:
                r.error(where, str(exc))
    return result


def _compression(r, m, at):
    """The list of encodings, or None when the key is absent or null."""
    if m.get("compression") is None:
        return None
    result = []
    for item, where in r.items(m, "compression", at):
        try:
            encoding = choice(COMPRESSIONS)(item)
        except Invalid as exc:
            r.error(where, str(exc))
            continue
        if encoding in result:
            r.error(where, f"{encoding} is listed twice")
            continue
        result.append(encoding)
    return result


def _cache(r, m, at):
    cache, where = r.section(m, "cache", at, CACHE_KEYS)
    if cache is None:
        return None
    return {"enabled": r.field(cache, "enabled", where, boolean, True),
            "default_ttl": r.field(cache, "default_ttl", where, duration_at_most(MAX_CACHE_TTL), 0.0),
            "stale_if_error": r.field(cache, "stale_if_error", where, duration_at_most(MAX_CACHE_TTL), 0.0)}


def _rate_limit(r, m, at):
    limit, where = r.section(m, "rate_limit", at, ("requests", "per", "key", "burst"), required=("requests",))
    if limit is None:
        return None
    return {"requests": r.field(limit, "requests", where, lambda v: validators.positive_int(v, "requests"), 1),
            "per": r.field(limit, "per", where, duration_at_most(MAX_RATE_PERIOD, positive=True), 1.0),
            "key": r.field(limit, "key", where, rate_limit_key, "ip"),
            "burst": r.field(limit, "burst", where, lambda v: validators.positive_int(v, "burst", minimum=0), 0)}


# Names the proxy owns (framing, hop-by-hop): header rules may not touch them (the engine
# refuses them too, proxy_engine/headerrules.py).
PROXY_OWNED_HEADERS = frozenset(("connection", "keep-alive", "proxy-connection", "proxy-authorization", "te",
                                 "trailer", "transfer-encoding", "upgrade", "content-length"))


def _rule_header_name(value):
    name = validators.header_name(value)
    if name.lower() in PROXY_OWNED_HEADERS:
        raise Invalid(f"{name} is managed by the proxy (framing / hop-by-hop) and cannot be changed by a rule")
    return name


def _header_values(r, rules, key, dir_path):
    """The {name: value} mapping under `key` (set / add), validated."""
    out = {}
    if rules.get(key) is None:
        return out
    path = _key(dir_path, key)
    if not isinstance(rules[key], dict):
        r.error(path, f"expected a mapping of header names to values, got {describe(rules[key])}")
        return out
    for header, value in rules[key].items():
        try:
            out[_rule_header_name(header)] = validators.header_value(value)
        except Invalid as exc:
            r.error(_key(path, header), str(exc))
    return out


def _headers(r, m, at):
    headers, where = r.section(m, "headers", at, ("request", "response"))
    if headers is None:
        return None
    result = {}
    for direction in ("request", "response"):
        result[direction] = {"set": {}, "remove": []}
        rules, dir_path = r.section(headers, direction, where, ("set", "add", "remove"))
        if rules is None:
            continue
        result[direction]["set"] = _header_values(r, rules, "set", dir_path)
        result[direction]["remove"] = r.scalar_list(rules, "remove", dir_path, _rule_header_name)
        added = _header_values(r, rules, "add", dir_path)
        if added:                        # only written when used, so older documents export unchanged
            result[direction]["add"] = added
    return result


# -- traffic features (issue #6) ------------------------------------------------------


def threshold(what):
    return lambda value: validators.positive_int(value, what, 1, MAX_THRESHOLD)


def status_range(value):
    """`expect`: one status (200) or an inclusive range written "200-399" → [low, high]."""
    if isinstance(value, int) and not isinstance(value, bool):
        low = high = value
    elif isinstance(value, str) and (parts := value.strip().split("-")) and len(parts) in (1, 2) and all(
            part.strip().isdigit() for part in parts):
        low, high = int(parts[0]), int(parts[-1])
    else:
        raise Invalid(f"expected a status like 200 or a range like \"200-399\", got {describe(value)}")
    for code in (low, high):
        if not 100 <= code <= 599:
            raise Invalid(f"status {code} out of range (100-599)")
    if low > high:
        raise Invalid(f"range {value!r} runs backwards ({low} > {high})")
    return [low, high]


def format_status_range(expect):
    low, high = expect
    return low if low == high else f"{low}-{high}"


def _health_check(r, lb, where):
    """Active checks: a GET of `path` every `interval`; a status within `expect` answered
    within `timeout` counts as a success; `healthy` / `unhealthy` consecutive results flip
    an upstream's state. The timeout must fit in the interval (checks never overlap)."""
    check, at = r.section(lb, "health_check", where, HEALTH_CHECK_KEYS)
    if check is None:
        return None
    d = HEALTH_CHECK_DEFAULTS
    result = {"path": r.field(check, "path", at, url_path, d["path"]),
              "interval": r.field(check, "interval", at, duration_at_most(DAY, positive=True), d["interval"])}
    result["timeout"] = r.field(check, "timeout", at, duration_at_most(DAY, positive=True),
                                default_check_timeout(result["interval"]))
    if check.get("timeout") is not None and result["timeout"] > result["interval"]:
        r.error(_key(at, "timeout"), f"timeout {validators.format_duration(result['timeout'])} is longer than the "
                                     f"interval {validators.format_duration(result['interval'])}")
    result["expect"] = r.field(check, "expect", at, status_range, list(d["expect"]))
    result["healthy"] = r.field(check, "healthy", at, threshold("healthy"), d["healthy"])
    result["unhealthy"] = r.field(check, "unhealthy", at, threshold("unhealthy"), d["unhealthy"])
    return result


def default_check_timeout(interval):
    """2s, or the interval when that is shorter."""
    return min(HEALTH_CHECK_DEFAULTS["timeout"], interval or HEALTH_CHECK_DEFAULTS["timeout"])


def full_health_check(check):
    """A stored health check with the keys added since (rows saved before issue #6 hold
    only path and interval) filled in with their defaults."""
    if check is None:
        return None
    result = {**HEALTH_CHECK_DEFAULTS, "timeout": default_check_timeout(check.get("interval")), **check}
    result["expect"] = list(result["expect"])
    return result


def full_cache(cache):
    """A stored cache setting with stale_if_error (added later) defaulted."""
    if cache is None:
        return None
    return {**CACHE_DEFAULTS, **cache}


def _passive(r, lb, where):
    """Passive checks: `failures` failed requests (refused, reset, timed out, invalid
    answers) within `window` take an upstream out for `cooldown`."""
    passive, at = r.section(lb, "passive", where, PASSIVE_KEYS)
    if passive is None:
        return None
    d = PASSIVE_DEFAULTS
    return {"failures": r.field(passive, "failures", at, threshold("failures"), d["failures"]),
            "window": r.field(passive, "window", at, duration_at_most(DAY, positive=True), d["window"]),
            "cooldown": r.field(passive, "cooldown", at, duration_at_most(DAY, positive=True), d["cooldown"])}


def cookie_name(value):
    """A cookie name: an RFC 6265 token (the header-name characters), at most 64 long."""
    if not isinstance(value, str) or not value:
        raise Invalid(f"expected a cookie name, got {describe(value)}")
    if len(value) > 64:
        raise Invalid("cookie name longer than 64 characters")
    bad = [ch for ch in value if ch not in validators._TOKEN_CHARS]
    if bad:
        raise Invalid(f"invalid cookie name {value!r}: character {bad[0]!r} not allowed (RFC 6265 token)")
    return value


def _sticky(r, lb, where):
    """Sticky sessions: the upstream picked for a client's first request is named in cookie
    `cookie`; later requests carrying it go to the same upstream while it is up. `max_age` 0
    makes it a session cookie."""
    sticky, at = r.section(lb, "sticky", where, STICKY_KEYS)
    if sticky is None:
        return None
    d = STICKY_DEFAULTS
    return {"cookie": r.field(sticky, "cookie", at, cookie_name, d["cookie"]),
            "max_age": r.field(sticky, "max_age", at, duration_at_most(10 * YEAR), d["max_age"])}


_ORIGIN = re.compile(r"^(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<host>\[[0-9a-f:.]+\]|[^:/?#\[\]@\s]+)(?::(?P<port>\d+))?$")


def origin(value):
    """A CORS origin: scheme://host[:port] (lower-case, the default port left out, as a
    browser sends it in Origin), or "*"."""
    if value == "*":
        return "*"
    if not isinstance(value, str) or not value:
        raise Invalid(f"expected an origin like https://app.example.com, got {describe(value)}")
    match = _ORIGIN.match(value.strip().lower())
    if not match:
        raise Invalid(f"origin {value!r} must look like https://app.example.com[:port] (no path, no trailing /)")
    host = match["host"]
    if "*" in host:
        raise Invalid(f"origin {value!r}: no wildcards in an origin (list each one, or \"*\" alone for any)")
    try:
        if host.startswith("["):
            validators.upstream_host(host)
        else:
            host = validators.hostname(host, allow_wildcard=False)
    except Invalid as exc:
        raise Invalid(f"origin {value!r}: {exc}") from None
    port = match["port"]
    if port is not None:
        validators.port(int(port))
        if {"http": "80", "https": "443"}.get(match["scheme"]) == str(int(port)):
            port = None
    return f"{match['scheme']}://{host}" + (f":{int(port)}" if port is not None else "")


def method(value):
    if not isinstance(value, str) or not value:
        raise Invalid(f"expected an HTTP method, got {describe(value)}")
    if value == "*":
        return value
    bad = [ch for ch in value if ch not in validators._TOKEN_CHARS]
    if bad:
        raise Invalid(f"invalid method {value!r}: character {bad[0]!r} not allowed")
    return value.upper()


def _unique_list(r, m, key, at, parse, fold=str.lower):
    """scalar_list without duplicates (compared after `fold`)."""
    result, seen = [], set()
    for item, where in r.items(m, key, at):
        try:
            value = parse(item)
        except Invalid as exc:
            r.error(where, str(exc))
            continue
        if fold(value) in seen:
            r.error(where, f"{value} is listed twice")
            continue
        seen.add(fold(value))
        result.append(value)
    return result


def _cors(r, m, at):
    """CORS answered by the proxy: preflights (OPTIONS with Access-Control-Request-Method)
    from an allowed origin get their answer locally; other responses to an allowed origin
    gain Access-Control-Allow-Origin (+ -Credentials, -Expose-Headers). `credentials` with
    origins ["*"] is refused: it would let every web site read responses with the visitor's
    cookies."""
    cors, where = r.section(m, "cors", at, CORS_KEYS, required=("origins",))
    if cors is None:
        return None
    d = CORS_DEFAULTS
    result = {"origins": _unique_list(r, cors, "origins", where, origin)}
    result["methods"] = (_unique_list(r, cors, "methods", where, method, fold=str)
                         if cors.get("methods") is not None else list(d["methods"]))
    result["headers"] = _unique_list(r, cors, "headers", where, validators.header_name)
    result["expose"] = _unique_list(r, cors, "expose", where, validators.header_name)
    result["credentials"] = r.field(cors, "credentials", where, boolean, d["credentials"])
    result["max_age"] = r.field(cors, "max_age", where, duration_at_most(DAY), d["max_age"])
    origins_at = _key(where, "origins")
    if cors.get("origins") is not None and not result["origins"] and not r.errors_at(origins_at):
        r.error(origins_at, "at least one origin is required (or \"*\" for any)")
    if "*" in result["origins"] and len(result["origins"]) > 1:
        r.error(origins_at, "\"*\" allows every origin: list it alone")
    if result["credentials"]:
        if "*" in result["origins"]:
            r.error(_key(where, "credentials"), "not allowed with origins [\"*\"]: every web site could read "
                                                "responses made with the visitor's cookies; list the origins")
        # ("*" in methods / headers is answered with the preflight's own request values
        # when credentials are on; in expose browsers would take it literally.)
        if "*" in result["expose"]:
            r.error(_key(where, "expose"), "\"*\" is not a wildcard for requests with credentials "
                                           "(browsers take it literally): list the names")
    return result


def forward_auth_url(value):
    """An absolute http(s) URL, its scheme written in lower case."""
    value = url(value)
    if "#" in value:
        raise Invalid(f"URL {value!r}: no fragment allowed")
    scheme, rest = value.split("://", 1)
    return f"{scheme.lower()}://{rest}"


def response_header_name(value):
    name = _rule_header_name(value)
    if name.lower() == "host":
        raise Invalid("Host cannot be copied from the authentication service's answer")
    return name


def _forward_auth(r, m, at):
    """Forward auth (Authelia, Authentik, oauth2-proxy): before a request goes upstream the
    proxy asks `url` about it (the original method, URI and host in X-Forwarded-* headers,
    with the request's cookies and Authorization). A 2xx answer lets the request through,
    carrying the `response_headers` of that answer (Remote-User, ...); a 3xx / 4xx answer
    (302 to the login page, 401) goes back to the client; an auth service that fails or does
    not answer within `timeout` gets the client a 502 / 504. Nothing reaches the upstream
    unless the auth service said yes."""
    auth, where = r.section(m, "forward_auth", at, FORWARD_AUTH_KEYS, required=("url",))
    if auth is None:
        return None
    d = FORWARD_AUTH_DEFAULTS
    return {"url": r.field(auth, "url", where, forward_auth_url),
            "response_headers": _unique_list(r, auth, "response_headers", where, response_header_name),
            "timeout": r.field(auth, "timeout", where, duration_at_most(MAX_FORWARD_AUTH_TIMEOUT, positive=True),
                               d["timeout"])}


def _proxy_host(r, value, at):
    m = r.mapping(value, at, PROXY_HOST_KEYS, required=("domains", "upstreams"))
    if m is None:
        return None
    host = {"at": at, "kind": "proxy_host", "domains": _domains(r, m, at),
            "enabled": r.field(m, "enabled", at, boolean, True),
            "upstreams": _upstreams(r, m, at),
            "lb_policy": "round_robin", "health_check": None, "passive_health": None, "lb_sticky": None,
            "websockets": r.field(m, "websockets", at, boolean, False),
            "connect_timeout": 5.0, "response_timeout": 60.0,
            "max_body_size": r.field(m, "max_body_size", at, validators.size),
            "certificate": None, "force_https": False, "http2": False, "hsts": False, "hsts_subdomains": False,
            "hsts_preload": False,
            "access_list": r.field(m, "access_list", at, name),
            "compression": _compression(r, m, at) or [],
            "cache": _cache(r, m, at),
            "rate_limit": _rate_limit(r, m, at),
            "headers": _headers(r, m, at),
            "security_headers": r.field(m, "security_headers", at, boolean, False),
            "hide_upstream_identity": r.field(m, "hide_upstream_identity", at, boolean, False),
            "cors": _cors(r, m, at),
            "forward_auth": _forward_auth(r, m, at),
            "block_exploits": r.field(m, "block_exploits", at, boolean, False),
            "locations": []}
    if m.get("upstreams") is not None and not host["upstreams"] and not r.errors_at(_key(at, "upstreams")):
        r.error(_key(at, "upstreams"), "at least one upstream is required")
    lb, where = r.section(m, "load_balancing", at, LOAD_BALANCING_KEYS)
    if lb is not None:
        host["lb_policy"] = r.field(lb, "policy", where, choice(LB_POLICIES), "round_robin")
        host["health_check"] = _health_check(r, lb, where)
        host["passive_health"] = _passive(r, lb, where)
        host["lb_sticky"] = _sticky(r, lb, where)
    timeouts, where = r.section(m, "timeouts", at, ("connect", "response"))
    if timeouts is not None:
        host["connect_timeout"] = r.field(timeouts, "connect", where, positive_duration, 5.0)
        host["response_timeout"] = r.field(timeouts, "response", where, positive_duration, 60.0)
    ssl, where = r.section(m, "ssl", at, ("certificate", "force_https", "http2", "hsts", "hsts_subdomains", "hsts_preload"))
    if ssl is not None:
        host["certificate"] = r.field(ssl, "certificate", where, name)
        for flag in ("force_https", "http2", "hsts", "hsts_subdomains", "hsts_preload"):
            host[flag] = r.field(ssl, flag, where, boolean, False)
    paths = set()
    for position, (item, where) in enumerate(r.items(m, "locations", at)):
        location = r.mapping(item, where, LOCATION_KEYS, required=("path",))
        if location is None:
            continue
        path = r.field(location, "path", where, url_path)
        if path is not None and path in paths:
            r.error(_key(where, "path"), f"location {path} is listed twice")
        paths.add(path)
        host["locations"].append({"position": position, "path": path, "upstreams": _upstreams(r, location, where),
                                  "cache": _cache(r, location, where), "headers": _headers(r, location, where),
                                  "compression": _compression(r, location, where),
                                  "rate_limit": _rate_limit(r, location, where)})
    return host


def _redirection_host(r, value, at):
    m = r.mapping(value, at, REDIRECTION_HOST_KEYS, required=("domains", "to"))
    if m is None:
        return None
    return {"at": at, "kind": "redirection_host", "domains": _domains(r, m, at),
            "enabled": r.field(m, "enabled", at, boolean, True),
            "to": r.field(m, "to", at, url),
            "code": r.field(m, "code", at, choice(REDIRECT_CODES), 301),
            "preserve_path": r.field(m, "preserve_path", at, boolean, True)}


def _dead_host(r, value, at):
    m = r.mapping(value, at, DEAD_HOST_KEYS, required=("domains",))
    if m is None:
        return None
    return {"at": at, "kind": "dead_host", "domains": _domains(r, m, at),
            "enabled": r.field(m, "enabled", at, boolean, True)}


def _stream(r, value, at):
    m = r.mapping(value, at, STREAM_KEYS, required=("listen", "upstream"))
    if m is None:
        return None
    upstream = r.field(m, "upstream", at, validators.host_port, (None, None))
    return {"at": at, "listen": r.field(m, "listen", at, validators.port),
            "protocol": r.field(m, "protocol", at, choice(("tcp", "udp")), "tcp"),
            "upstream_host": upstream[0], "upstream_port": upstream[1],
            "enabled": r.field(m, "enabled", at, boolean, True)}


# -- whole-document checks ------------------------------------------------------------


def _check_unique(r, items, key, what):
    seen = {}
    for item in items:
        value = item[key]
        if value is None:
            continue
        if value in seen:
            r.error(_key(item["at"], key), f"{what} {value!r} is already defined at {seen[value]}")
        else:
            seen[value] = item["at"]


def _check_streams_unique(r, streams):
    seen = {}
    for stream in streams:
        identity = (stream["listen"], stream["protocol"])
        if stream["listen"] is None:
            continue
        if identity in seen:
            r.error(_key(stream["at"], "listen"), f"{stream['protocol']} port {stream['listen']} is already used by {seen[identity]}")
        else:
            seen[identity] = stream["at"]


def hosts(doc):
    """Every host of the document, of all kinds, in document order."""
    return [host for section in HOST_SECTIONS for host in doc[section]]


def _check_domains_unique(r, doc):
    """A domain belongs to at most one enabled host of the document."""
    owner = {}
    for host in hosts(doc):
        if not host["enabled"]:
            continue
        for i, domain in enumerate(host["domains"]):
            if domain in owner:
                r.error(_index(_key(host["at"], "domains"), i), f"{domain} is already used by {owner[domain]}")
            else:
                owner[domain] = host["at"]
