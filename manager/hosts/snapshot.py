"""build_snapshot(): the only code that turns database rows into the engine's document.

The document's shape is described in docs/snapshot.md. The revision is read first, so
a change committed while the rows are read is at worst served one poll later, never
labelled as already served.
"""
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from manager.access.models import AccessList
from manager.certificates.models import AcmeChallenge, Certificate
from manager.configuration.schema import full_cache, full_health_check

from .models import DeadHost, ProxyHost, RedirectionHost, Settings, Stream
from .revision import current_revision

__all__ = ["build_snapshot", "current_revision"]

EMPTY_HEADERS = {"request": {"set": {}, "remove": []}, "response": {"set": {}, "remove": []}}
NO_CACHE = {"enabled": False, "default_ttl": 0.0, "stale_if_error": 0.0}
ACME_CHALLENGE_LIFETIME = timedelta(hours=1)   # older tokens are leftovers of a crashed request


def build_snapshot():
    with transaction.atomic():
        revision = current_revision()
        config = Settings.current()
        return {
            "revision": revision,
            "settings": _settings(config),
            "proxy_hosts": [_proxy_host(host) for host in ProxyHost.objects.filter(enabled=True)
                            .select_related("certificate", "access_list").prefetch_related("locations")],
            "redirection_hosts": [
                {"id": h.pk, "domains": list(h.domains), "to": h.to, "code": h.code, "preserve_path": h.preserve_path}
                for h in RedirectionHost.objects.filter(enabled=True)
            ],
            "dead_hosts": [{"id": h.pk, "domains": list(h.domains)} for h in DeadHost.objects.filter(enabled=True)],
            "streams": [
                {"id": s.pk, "listen": s.listen, "protocol": s.protocol, "upstream_host": s.upstream_host, "upstream_port": s.upstream_port}
                for s in Stream.objects.filter(enabled=True)
            ],
            "access_lists": [_access_list(a) for a in AccessList.objects.prefetch_related("users", "rules")],
            "certificates": [
                {"name": c.name, "domains": list(c.domains), "certificate_pem": c.certificate_pem,
                 "key_pem": c.key_pem, "chain_pem": c.chain_pem}
                for c in Certificate.objects.all() if c.usable
            ],
            "acme_challenges": [
                {"token": c.token, "key_authorization": c.key_authorization}
                for c in AcmeChallenge.objects.filter(created_at__gte=timezone.now() - ACME_CHALLENGE_LIFETIME)
            ],
        }


def _settings(config):
    site = {"action": config.default_site_action}
    if config.default_site_action == "redirect":
        site["to"] = config.default_site_to
    elif config.default_site_action == "html":
        site["body"] = config.default_site_body
    return {"default_site": site, "trusted_proxies": list(config.trusted_proxies), "tls_fallback": config.tls_fallback,
            "cache": {"memory_bytes": config.cache_memory_bytes, "disk_bytes": config.cache_disk_bytes}}


def _proxy_host(host):
    return {
        "id": host.pk,
        "domains": list(host.domains),
        "upstreams": list(host.upstreams),
        "load_balancing": {"policy": host.lb_policy, "health_check": full_health_check(host.health_check),
                           "passive": _copy(host.passive_health), "sticky": _copy(host.lb_sticky)},
        "websockets": host.websockets,
        "timeouts": {"connect": host.connect_timeout, "response": host.response_timeout},
        "max_body_size": host.max_body_size,
        "ssl": {
            "certificate": host.certificate.name if host.certificate else None,
            "force_https": host.force_https, "http2": host.http2,
            "hsts": host.hsts, "hsts_subdomains": host.hsts_subdomains, "hsts_preload": host.hsts_preload,
        },
        "access_list": host.access_list.name if host.access_list else None,
        "compression": list(host.compression),
        "cache": full_cache(host.cache) or dict(NO_CACHE),
        "cache_generation": host.cache_generation,
        "rate_limit": host.rate_limit,
        "headers": host.headers or EMPTY_HEADERS,
        "security_headers": host.security_headers,
        "hide_upstream_identity": host.hide_upstream_identity,
        "cors": _copy(host.cors),
        "forward_auth": _copy(host.forward_auth),
        "block_exploits": host.block_exploits,
        "locations": [
            {"path": loc.path, "upstreams": list(loc.upstreams), "cache": full_cache(loc.cache), "headers": loc.headers,
             "compression": loc.compression, "rate_limit": loc.rate_limit}
            for loc in host.locations.all()
        ],
    }


def _copy(value):
    """A stored mapping (or None) as a fresh dict with fresh lists: the document never shares
    objects with model instances."""
    if value is None:
        return None
    return {key: list(item) if isinstance(item, list) else item for key, item in value.items()}


def _access_list(access_list):
    return {
        "name": access_list.name,
        "satisfy": access_list.satisfy,
        "pass_auth": access_list.pass_auth,
        "users": [{"username": u.username, "password_hash": u.password_hash} for u in access_list.users.all()],
        "rules": [{"action": r.action, "source": r.source} for r in access_list.rules.all()],
    }
