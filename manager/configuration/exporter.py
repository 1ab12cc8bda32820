"""Write the whole configuration as a document (docs/config-format.md).

Every value is written in the canonical text form the importer reads back
(durations as `5m`, sizes as `100m`, upstreams as URLs), keys in a fixed order, lists in
a stable order, so export → import → export gives the same bytes. A key whose value is
"not set" (null) is left out; every other key is written, `enabled` included, except the
keys added with the traffic features (issue #6), which are written only when they differ
from their defaults, so a configuration that does not use them exports exactly as before.
`cache_generation` (the purge counter) is state, not configuration, and is not written.
"""
import yaml

from manager.access.models import AccessList
from manager.certificates.models import Certificate, DnsProvider
from manager.hosts.models import DeadHost, ProxyHost, RedirectionHost, Settings, Stream
from manager.lib import validators

from . import schema
from .schema import DNS_KIND_KEYS, VERSION


def export_document(include_secrets=False):
    """The configuration as plain data (dicts, lists, strings, numbers, booleans)."""
    return {
        "version": VERSION,
        "settings": _settings(Settings.current()),
        "access_lists": [_access_list(a) for a in AccessList.objects.order_by("name").prefetch_related("users", "rules")],
        "dns_providers": [_dns_provider(p, include_secrets) for p in DnsProvider.objects.order_by("name")],
        "certificates": [_certificate(c, include_secrets) for c in
                         Certificate.objects.order_by("name").select_related("dns_provider")],
        "proxy_hosts": [_proxy_host(h) for h in ProxyHost.objects.order_by("id")
                        .select_related("certificate", "access_list").prefetch_related("locations")],
        "redirection_hosts": [
            {"domains": list(h.domains), "enabled": h.enabled, "to": h.to, "code": h.code, "preserve_path": h.preserve_path}
            for h in RedirectionHost.objects.order_by("id")
        ],
        "dead_hosts": [{"domains": list(h.domains), "enabled": h.enabled} for h in DeadHost.objects.order_by("id")],
        "streams": [
            {"listen": s.listen, "protocol": s.protocol,
             "upstream": validators.format_host_port(s.upstream_host, s.upstream_port), "enabled": s.enabled}
            for s in Stream.objects.order_by("id")
        ],
    }


def export_yaml(include_secrets=False):
    return dump_yaml(export_document(include_secrets))


def dump_yaml(document):
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True, width=120)


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (PEMs, HTML bodies) as literal blocks, lists of plain values on one line."""


def _represent_str(dumper, value):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


def _represent_list(dumper, value):
    flow = all(isinstance(item, (str, int)) and "\n" not in str(item) for item in value)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=flow)


_Dumper.add_representer(str, _represent_str)
_Dumper.add_representer(list, _represent_list)


def duration(seconds):
    return "0s" if not seconds else validators.format_duration(seconds)


def _without_nulls(mapping):
    return {key: value for key, value in mapping.items() if value is not None}


def _settings(config):
    action = int(config.default_site_action) if config.default_site_action.isdigit() else config.default_site_action
    site = {"action": action}
    if config.default_site_action == "redirect":
        site["to"] = config.default_site_to
    elif config.default_site_action == "html":
        site["body"] = config.default_site_body
    result = {
        "default_site": site,
        "acme": _without_nulls({"email": config.acme_email or None, "directory": config.acme_directory,
                                "ca_bundle": config.acme_ca_bundle or None}),
        "tls": {"fallback": config.tls_fallback},
        "trusted_proxies": list(config.trusted_proxies),
    }
    cache = {"memory_bytes": config.cache_memory_bytes, "disk_bytes": config.cache_disk_bytes}
    if cache != schema.SETTINGS_CACHE_DEFAULTS:        # written only when changed: older exports stay the same
        result["cache"] = {key: validators.format_size(value) for key, value in cache.items()}
    return result


def _access_list(access_list):
    return {
        "name": access_list.name,
        "satisfy": access_list.satisfy,
        "pass_auth": access_list.pass_auth,
        "users": [{"username": u.username, "password_hash": u.password_hash} for u in access_list.users.all()],
        "rules": [{r.action: r.source} for r in access_list.rules.all()],
    }


def _dns_provider(provider, include_secrets):
    """Every key of the provider's kind; its secret (API token, TSIG secret) only with include_secrets."""
    result = {"name": provider.name, "kind": provider.kind}
    for key in DNS_KIND_KEYS[provider.kind]:
        if key in provider.secret_fields and not include_secrets:
            continue
        result[key] = getattr(provider, key)
    return result


def _certificate(cert, include_secrets):
    """Custom certificates always carry their certificate and chain; keys (and Let's
    Encrypt PEMs, which certbot renews) only with include_secrets. `challenge` and
    `dns_provider` are written for DNS-01 certificates only (HTTP-01 is the default)."""
    result = {"name": cert.name, "provider": cert.provider, "domains": list(cert.domains)}
    if cert.provider == "letsencrypt" and cert.challenge == "dns":
        result["challenge"] = "dns"
        result["dns_provider"] = cert.dns_provider.name if cert.dns_provider else None
        result = _without_nulls(result)
    if cert.certificate_pem and (cert.provider == "custom" or include_secrets):
        result["certificate_pem"] = cert.certificate_pem
        if include_secrets and cert.key_pem:
            result["key_pem"] = cert.key_pem
        if cert.chain_pem:
            result["chain_pem"] = cert.chain_pem
    return result


UPSTREAM_DEFAULTS = {"weight": 1, "verify": True, "ca_pem": None}


def upstreams(entries):
    """Each upstream as its URL, or as {url, ...} with the options that differ from the defaults."""
    result = []
    for entry in entries:
        url = validators.format_upstream_url(entry["scheme"], entry["host"], entry["port"])
        options = {key: entry[key] for key, default in UPSTREAM_DEFAULTS.items() if entry.get(key, default) != default}
        result.append({"url": url, **options} if options else url)
    return result


def _cache(cache):
    if cache is None:
        return None
    result = {"enabled": cache["enabled"], "default_ttl": duration(cache["default_ttl"])}
    if cache.get("stale_if_error"):
        result["stale_if_error"] = duration(cache["stale_if_error"])
    return result


def _health_check(check):
    """path and interval always; the keys added later only when they differ from their defaults."""
    if check is None:
        return None
    check = schema.full_health_check(check)
    result = {"path": check["path"], "interval": duration(check["interval"])}
    if check["timeout"] != schema.default_check_timeout(check["interval"]):
        result["timeout"] = duration(check["timeout"])
    if check["expect"] != schema.HEALTH_CHECK_DEFAULTS["expect"]:
        result["expect"] = schema.format_status_range(check["expect"])
    for key in ("healthy", "unhealthy"):
        if check[key] != schema.HEALTH_CHECK_DEFAULTS[key]:
            result[key] = check[key]
    return result


def _passive(passive):
    if passive is None:
        return None
    return {"failures": passive["failures"], "window": duration(passive["window"]),
            "cooldown": duration(passive["cooldown"])}


def _sticky(sticky):
    if sticky is None:
        return None
    return {"cookie": sticky["cookie"], "max_age": duration(sticky["max_age"])}


def _cors(cors):
    if cors is None:
        return None
    return {"origins": list(cors["origins"]), "methods": list(cors["methods"]), "headers": list(cors["headers"]),
            "expose": list(cors["expose"]), "credentials": cors["credentials"], "max_age": duration(cors["max_age"])}


def _forward_auth(auth):
    if auth is None:
        return None
    return {"url": auth["url"], "response_headers": list(auth["response_headers"]), "timeout": duration(auth["timeout"])}


def _rate_limit(limit):
    if limit is None:
        return None
    return {"requests": limit["requests"], "per": duration(limit["per"]), "key": limit["key"], "burst": limit["burst"]}


def _headers(headers):
    if headers is None:
        return None
    result = {}
    for direction in ("request", "response"):
        rules = headers.get(direction) or {}
        result[direction] = {"set": dict(sorted((rules.get("set") or {}).items(), key=lambda kv: kv[0].lower())),
                             "remove": list(rules.get("remove") or [])}
        if rules.get("add"):
            result[direction]["add"] = dict(sorted(rules["add"].items(), key=lambda kv: kv[0].lower()))
    return result


def _proxy_host(host):
    ssl = {"certificate": host.certificate.name if host.certificate else None, "force_https": host.force_https,
           "http2": host.http2, "hsts": host.hsts, "hsts_subdomains": host.hsts_subdomains,
           "hsts_preload": host.hsts_preload}
    return _without_nulls({
        "domains": list(host.domains),
        "enabled": host.enabled,
        "upstreams": upstreams(host.upstreams),
        "load_balancing": _without_nulls({
            "policy": host.lb_policy,
            "sticky": _sticky(host.lb_sticky),
            "health_check": _health_check(host.health_check),
            "passive": _passive(host.passive_health),
        }),
        "websockets": host.websockets,
        "timeouts": {"connect": duration(host.connect_timeout), "response": duration(host.response_timeout)},
        "max_body_size": validators.format_size(host.max_body_size) if host.max_body_size is not None else None,
        "ssl": _without_nulls(ssl),
        "access_list": host.access_list.name if host.access_list else None,
        "forward_auth": _forward_auth(host.forward_auth),
        "compression": list(host.compression),
        "cache": _cache(host.cache),
        "rate_limit": _rate_limit(host.rate_limit),
        "headers": _headers(host.headers),
        # The presets are written only when on, so exports from before they existed stay the same.
        "security_headers": host.security_headers or None,
        "hide_upstream_identity": host.hide_upstream_identity or None,
        "cors": _cors(host.cors),
        "block_exploits": host.block_exploits,
        "locations": [_without_nulls({
            "path": loc.path,
            "upstreams": upstreams(loc.upstreams),
            "cache": _cache(loc.cache),
            "headers": _headers(loc.headers),
            "compression": list(loc.compression) if loc.compression is not None else None,
            "rate_limit": _rate_limit(loc.rate_limit),
        }) for loc in host.locations.all()],
    })
