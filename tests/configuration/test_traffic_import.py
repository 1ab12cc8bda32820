"""The traffic-feature keys (issue #6) through import, export and the engine snapshot:
round trips byte for byte, older exports unchanged, the document shape of docs/snapshot.md."""
import importlib
import io

import pytest
import yaml
from django.apps import apps
from django.core.management import call_command

from manager.configuration.exporter import export_yaml
from manager.configuration.importer import import_yaml
from manager.hosts.models import Location, ProxyHost, Settings
from manager.hosts.snapshot import build_snapshot

from .conftest import CONTRACT_EXAMPLE
from .test_import import export_config, import_config, wipe

pytestmark = pytest.mark.django_db

NEW_KEYS = ("sticky:", "passive:", "timeout:", "expect:", "healthy:", "stale_if_error:", "security_headers:",
            "hide_upstream_identity:", "cors:", "forward_auth:", "cache_generation", "memory_bytes", "disk_bytes")


def media_host():
    return next(h for h in ProxyHost.objects.all() if h.domains == ["media.example.test"])


def exported_host(text, domain):
    return next(h for h in yaml.safe_load(text)["proxy_hosts"] if domain in h["domains"])


def test_every_new_key_round_trips_byte_for_byte(tmp_path, full_document):
    import_config(tmp_path, full_document)
    first = export_config("--include-secrets")
    wipe()
    import_config(tmp_path, first, "--replace")
    second = export_config("--include-secrets")

    assert second == first
    media = exported_host(first, "media.example.test")
    assert media["load_balancing"] == {
        "policy": "least_conn", "sticky": {"cookie": "jf_route", "max_age": "1d"},
        "health_check": {"path": "/health", "interval": "30s", "timeout": "5s", "expect": "200-299", "healthy": 1,
                         "unhealthy": 5},
        "passive": {"failures": 5, "window": "1m", "cooldown": "2m"}}
    assert media["forward_auth"] == {"url": "http://127.0.0.1:9091/api/verify?rd=https://auth.example.test",
                                     "response_headers": ["Remote-User", "Remote-Groups"], "timeout": "3s"}
    assert media["cache"] == {"enabled": True, "default_ttl": "5m", "stale_if_error": "1h"}
    assert media["security_headers"] is True and media["hide_upstream_identity"] is True
    assert media["cors"] == {"origins": ["https://app.example.test", "http://localhost:5173"], "methods": ["GET", "POST"],
                             "headers": ["Content-Type"], "expose": ["X-Total-Count"], "credentials": True,
                             "max_age": "1h"}
    assert media["locations"][0]["cache"] == {"enabled": True, "default_ttl": "1d", "stale_if_error": "10m"}
    status = exported_host(first, "status.example.test")
    assert status["load_balancing"]["health_check"] == {"path": "/", "interval": "1m", "expect": 204}
    assert status["cors"] == {"origins": ["*"], "methods": ["GET", "HEAD", "POST"], "headers": [], "expose": [],
                              "credentials": False, "max_age": "10m"}
    assert yaml.safe_load(first)["settings"]["cache"] == {"memory_bytes": "256m", "disk_bytes": "10g"}
    assert list(media) == ["domains", "enabled", "upstreams", "load_balancing", "websockets", "timeouts", "ssl",
                           "forward_auth", "compression", "cache", "security_headers", "hide_upstream_identity",
                           "cors", "block_exploits", "locations"]


def test_a_configuration_not_using_the_new_keys_exports_without_them(tmp_path):
    import_config(tmp_path, CONTRACT_EXAMPLE)
    exported = export_config()
    for key in NEW_KEYS:
        assert key not in exported, key


def test_rows_saved_before_the_new_keys_export_exactly_as_before():
    """A host stored with the old shapes ({path, interval}, {enabled, default_ttl}) exports
    the text the exporter wrote before issue #6."""
    host = ProxyHost.objects.create(domains=["old.home.test"], lb_policy="first",
                                    upstreams=[{"scheme": "http", "host": "10.0.0.2", "port": 80, "weight": 1}],
                                    health_check={"path": "/ping", "interval": 5.0},
                                    cache={"enabled": True, "default_ttl": 60.0})
    Location.objects.create(proxy_host=host, path="/a/", cache={"enabled": False, "default_ttl": 0.0})

    text = export_yaml()

    assert text.split("proxy_hosts:\n", 1)[1].split("redirection_hosts:")[0] == """\
- domains: [old.home.test]
  enabled: true
  upstreams: ['http://10.0.0.2:80']
  load_balancing:
    policy: first
    health_check:
      path: /ping
      interval: 5s
  websockets: false
  timeouts:
    connect: 5s
    response: 1m
  ssl:
    force_https: false
    http2: false
    hsts: false
    hsts_subdomains: false
    hsts_preload: false
  compression: []
  cache:
    enabled: true
    default_ttl: 1m
  block_exploits: false
  locations:
  - path: /a/
    upstreams: []
    cache:
      enabled: false
      default_ttl: 0s
"""
    assert "cache:" not in text.split("proxy_hosts:")[0]     # default cache sizes: no settings.cache


def test_the_migration_fills_the_new_keys_of_stored_checks_and_caches():
    host = ProxyHost.objects.create(domains=["old.home.test"],
                                    upstreams=[{"scheme": "http", "host": "10.0.0.2", "port": 80, "weight": 1}],
                                    health_check={"path": "/ping", "interval": 1.0},
                                    cache={"enabled": True, "default_ttl": 60.0})
    location = Location.objects.create(proxy_host=host, path="/a/", cache={"enabled": True, "default_ttl": 5.0})
    untouched = ProxyHost.objects.create(domains=["new.home.test"], upstreams=host.upstreams)
    migration = importlib.import_module("manager.hosts.migrations.0008_traffic_features")

    migration.fill_defaults(apps, None)

    host.refresh_from_db()
    location.refresh_from_db()
    untouched.refresh_from_db()
    assert host.health_check == {"path": "/ping", "interval": 1.0, "timeout": 1.0, "expect": [200, 399],
                                 "healthy": 2, "unhealthy": 3}
    assert host.cache == {"enabled": True, "default_ttl": 60.0, "stale_if_error": 0.0}
    assert location.cache == {"enabled": True, "default_ttl": 5.0, "stale_if_error": 0.0}
    assert (untouched.health_check, untouched.cache) == (None, None)


def test_the_cache_generation_is_state_kept_across_imports(tmp_path, full_document):
    import_config(tmp_path, full_document)
    ProxyHost.objects.filter(pk=media_host().pk).update(cache_generation=7)
    exported = export_config()
    assert "generation" not in exported

    import_yaml(exported)

    assert media_host().cache_generation == 7


def test_the_snapshot_carries_every_new_key_in_engine_form(tmp_path, full_document):
    import_config(tmp_path, full_document)
    ProxyHost.objects.filter(pk=media_host().pk).update(cache_generation=3)

    doc = build_snapshot()

    assert doc["settings"]["cache"] == {"memory_bytes": 256 * 1024**2, "disk_bytes": 10 * 1024**3}
    media = next(h for h in doc["proxy_hosts"] if h["domains"] == ["media.example.test"])
    assert media["load_balancing"] == {
        "policy": "least_conn",
        "health_check": {"path": "/health", "interval": 30.0, "timeout": 5.0, "expect": [200, 299], "healthy": 1,
                         "unhealthy": 5},
        "passive": {"failures": 5, "window": 60.0, "cooldown": 120.0},
        "sticky": {"cookie": "jf_route", "max_age": 86400.0}}
    assert media["cache"] == {"enabled": True, "default_ttl": 300.0, "stale_if_error": 3600.0}
    assert media["cache_generation"] == 3
    assert media["security_headers"] is True and media["hide_upstream_identity"] is True
    assert media["cors"] == {"origins": ["https://app.example.test", "http://localhost:5173"],
                             "methods": ["GET", "POST"], "headers": ["Content-Type"], "expose": ["X-Total-Count"],
                             "credentials": True, "max_age": 3600.0}
    assert media["forward_auth"] == {"url": "http://127.0.0.1:9091/api/verify?rd=https://auth.example.test",
                                     "response_headers": ["Remote-User", "Remote-Groups"], "timeout": 3.0}
    assert media["locations"][0]["cache"] == {"enabled": True, "default_ttl": 86400.0, "stale_if_error": 600.0}

    plain = next(h for h in doc["proxy_hosts"] if h["domains"] == ["app.example.test"])
    assert plain["load_balancing"]["passive"] is None and plain["load_balancing"]["sticky"] is None
    assert plain["load_balancing"]["health_check"]["expect"] == [200, 399]
    assert plain["cache_generation"] == 0 and plain["cors"] is None and plain["forward_auth"] is None
    assert plain["security_headers"] is False and plain["hide_upstream_identity"] is False


def test_the_snapshot_fills_defaults_for_rows_saved_before_the_new_keys():
    ProxyHost.objects.create(domains=["old.home.test"],
                             upstreams=[{"scheme": "http", "host": "10.0.0.2", "port": 80, "weight": 1}],
                             health_check={"path": "/ping", "interval": 5.0}, cache={"enabled": True, "default_ttl": 60.0})
    Settings.objects.all().delete()

    (host,) = build_snapshot()["proxy_hosts"]

    assert host["load_balancing"]["health_check"] == {"path": "/ping", "interval": 5.0, "timeout": 2.0,
                                                      "expect": [200, 399], "healthy": 2, "unhealthy": 3}
    assert host["cache"] == {"enabled": True, "default_ttl": 60.0, "stale_if_error": 0.0}
    assert build_snapshot()["settings"]["cache"] == {"memory_bytes": 64 * 1024**2, "disk_bytes": 0}


def test_the_engine_parses_the_snapshot_of_the_full_document(tmp_path, full_document):
    """The engine's strict parser accepts what the builder emits (it ignores the keys its
    branch does not read yet)."""
    from proxy_engine.snapshot import parse_snapshot

    import_config(tmp_path, full_document)
    parse_snapshot(build_snapshot())


def test_replace_without_settings_resets_the_cache_sizes(tmp_path):
    config = Settings.load()
    config.cache_memory_bytes, config.cache_disk_bytes = 1024**3, 1024**3
    config.save()
    out = io.StringIO()
    path = tmp_path / "doc.yaml"
    path.write_text("version: 1\n")
    call_command("importconfig", str(path), "--replace", stdout=out)
    config.refresh_from_db()
    assert (config.cache_memory_bytes, config.cache_disk_bytes) == (64 * 1024**2, 0)
