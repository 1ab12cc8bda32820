"""Dashboard side of the traffic features (issue #6): the proxy host form's new sections,
their errors (worded like import errors), "Purge cache", the upstream health panel and the
cache sizes of the settings page."""
import time

import pytest

from manager.audit.models import AuditEntry
from manager.hosts.models import EngineNode, Location, ProxyHost, Settings
from manager.hosts.revision import current_revision
from manager.hosts.management.commands.runproxy import report_status
from tests.conftest import make_user

pytestmark = pytest.mark.django_db
UPSTREAMS = [{"scheme": "http", "host": "10.0.1.20", "port": 8096, "weight": 1},
             {"scheme": "http", "host": "10.0.1.21", "port": 8096, "weight": 1}]
CACHE = {"enabled": True, "default_ttl": 300.0, "stale_if_error": 0.0}


def user(name, level="hidden", superuser=False, visibility="all"):
    return make_user(name, superuser, proxy_hosts=level, visibility=visibility)


def host(domain="media.home.test", **fields):
    return ProxyHost.objects.create(domains=[domain], **{"upstreams": UPSTREAMS, **fields})


def form_data(**overrides):
    data = {"domains": "media.home.test", "upstreams": "http://10.0.1.20:8096\nhttp://10.0.1.21:8096",
            "enabled": "on", "lb_policy": "round_robin", "connect_timeout": "5s", "response_timeout": "1m",
            "rate_key": "ip"}
    data.update(overrides)
    return {key: value for key, value in data.items() if value is not None}


# -- the form -------------------------------------------------------------------------


def test_the_add_page_has_the_new_sections_and_fields(admin):
    page = admin.get("/hosts/add/").content.decode()
    for section in ("Access", "Load balancing", "Traffic", "Cache", "Compression", "Rate limit", "Headers"):
        assert f"<legend>{section}</legend>" in page, section
    for name in ("sticky_cookie", "sticky_max_age", "health_check_timeout", "health_check_expect", "health_check_healthy",
                 "health_check_unhealthy", "passive_failures", "passive_window", "passive_cooldown",
                 "cache_stale_if_error", "rate_key_header", "security_headers", "hide_upstream_identity", "cors_origins",
                 "cors_methods", "cors_headers", "cors_expose", "cors_credentials", "cors_max_age", "forward_auth_url",
                 "forward_auth_headers", "forward_auth_timeout"):
        assert f'name="{name}"' in page, name
    for encoding in ("gzip", "br", "zstd"):
        assert f'value="{encoding}"' in page


def test_saving_the_load_balancing_section(admin):
    response = admin.post("/hosts/add/", form_data(
        lb_policy="least_conn", sticky_cookie="jf_route", sticky_max_age="1d", health_check_path="/health",
        health_check_interval="30s", health_check_timeout="5s", health_check_expect="200-299", health_check_healthy="1",
        health_check_unhealthy="5", passive_failures="5", passive_window="1m", passive_cooldown="2m"))
    assert response.status_code == 302, response.context["form"].errors
    saved = ProxyHost.objects.get()
    assert saved.lb_policy == "least_conn"
    assert saved.lb_sticky == {"cookie": "jf_route", "max_age": 86400.0}
    assert saved.health_check == {"path": "/health", "interval": 30.0, "timeout": 5.0, "expect": [200, 299],
                                  "healthy": 1, "unhealthy": 5}
    assert saved.passive_health == {"failures": 5, "window": 60.0, "cooldown": 120.0}


def test_one_field_of_a_section_turns_it_on_with_the_defaults(admin):
    response = admin.post("/hosts/add/", form_data(passive_failures="2", health_check_expect="204",
                                                   sticky_max_age="1h"))
    assert response.status_code == 302, response.context["form"].errors
    saved = ProxyHost.objects.get()
    assert saved.passive_health == {"failures": 2, "window": 10.0, "cooldown": 30.0}
    assert saved.health_check == {"path": "/", "interval": 10.0, "timeout": 2.0, "expect": [204, 204],
                                  "healthy": 2, "unhealthy": 3}
    assert saved.lb_sticky == {"cookie": "gh_sticky", "max_age": 3600.0}


def test_leaving_a_section_empty_leaves_the_feature_off(admin):
    assert admin.post("/hosts/add/", form_data()).status_code == 302
    saved = ProxyHost.objects.get()
    assert (saved.lb_sticky, saved.health_check, saved.passive_health, saved.cache, saved.rate_limit) == (None,) * 5
    assert (saved.cors, saved.forward_auth, saved.security_headers, saved.hide_upstream_identity) == (None, None, False, False)


def test_saving_the_cache_compression_and_rate_limit_sections(admin):
    response = admin.post("/hosts/add/", form_data(
        cache_enabled="on", cache_ttl="5m", cache_stale_if_error="1h", compression=["br", "zstd"],
        rate_requests="100", rate_per="1m", rate_burst="20", rate_key="header", rate_key_header="X-Api-Key"))
    assert response.status_code == 302, response.context["form"].errors
    saved = ProxyHost.objects.get()
    assert saved.cache == {"enabled": True, "default_ttl": 300.0, "stale_if_error": 3600.0}
    assert saved.compression == ["br", "zstd"]
    assert saved.rate_limit == {"requests": 100, "per": 60.0, "key": "header:X-Api-Key", "burst": 20}


def test_saving_the_headers_and_access_sections(admin):
    response = admin.post("/hosts/add/", form_data(
        security_headers="on", hide_upstream_identity="on",
        cors_origins="https://app.home.test\nhttp://localhost:5173", cors_methods="GET, POST, delete",
        cors_headers="Content-Type, Authorization", cors_expose="X-Total-Count", cors_credentials="on", cors_max_age="1h",
        forward_auth_url="http://127.0.0.1:9091/api/verify", forward_auth_headers="Remote-User\nRemote-Groups",
        forward_auth_timeout="3s"))
    assert response.status_code == 302, response.context["form"].errors
    saved = ProxyHost.objects.get()
    assert saved.security_headers and saved.hide_upstream_identity
    assert saved.cors == {"origins": ["https://app.home.test", "http://localhost:5173"], "methods": ["GET", "POST", "DELETE"],
                          "headers": ["Content-Type", "Authorization"], "expose": ["X-Total-Count"], "credentials": True,
                          "max_age": 3600.0}
    assert saved.forward_auth == {"url": "http://127.0.0.1:9091/api/verify",
                                  "response_headers": ["Remote-User", "Remote-Groups"], "timeout": 3.0}
    entry = AuditEntry.objects.get()
    assert entry.after["cors"]["origins"] == ["https://app.home.test", "http://localhost:5173"]


def test_the_edit_form_shows_every_new_value_and_saving_it_back_changes_nothing(admin):
    item = host(lb_sticky={"cookie": "jf_route", "max_age": 0.0},
                health_check={"path": "/health", "interval": 30.0, "timeout": 2.0, "expect": [200, 299], "healthy": 2,
                              "unhealthy": 3},
                passive_health={"failures": 5, "window": 10.0, "cooldown": 30.0},
                cache={"enabled": True, "default_ttl": 300.0, "stale_if_error": 3600.0},
                rate_limit={"requests": 5, "per": 1.0, "key": "header:X-Api-Key", "burst": 0},
                security_headers=True, cors={"origins": ["*"], "methods": ["GET"], "headers": [], "expose": [],
                                             "credentials": False, "max_age": 600.0},
                forward_auth={"url": "http://auth.lan:9091/api/verify", "response_headers": ["Remote-User"], "timeout": 5.0},
                cache_generation=4)
    stored = {field: getattr(item, field) for field in ("lb_sticky", "health_check", "passive_health", "cache",
                                                         "rate_limit", "cors", "forward_auth", "security_headers")}
    form = admin.get(f"/hosts/{item.pk}/edit/").context["form"]
    initial = form.initial
    assert (initial["sticky_cookie"], initial["health_check_path"], initial["health_check_expect"]) == (
        "jf_route", "/health", "200-299")
    assert initial["health_check_timeout"] == "" and initial["passive_failures"] == 5
    assert (initial["cache_stale_if_error"], initial["rate_key"], initial["rate_key_header"]) == ("1h", "header", "X-Api-Key")
    assert (initial["cors_origins"], initial["cors_methods"], initial["forward_auth_headers"]) == ("*", "GET", "Remote-User")
    data = {key: value for key, value in initial.items() if value not in (None, False, "")}
    response = admin.post(f"/hosts/{item.pk}/edit/", data)
    assert response.status_code == 302, response.context["form"].errors
    item.refresh_from_db()
    assert {field: getattr(item, field) for field in stored} == stored
    assert item.cache_generation == 4


@pytest.mark.parametrize("overrides, field, message", [
    ({"sticky_cookie": "my cookie"}, "sticky_cookie",
     "load_balancing.sticky.cookie: invalid cookie name 'my cookie': character ' ' not allowed (RFC 6265 token)"),
    ({"sticky_max_age": "forever"}, "sticky_max_age", "load_balancing.sticky.max_age: invalid duration 'forever'"),
    ({"health_check_expect": "399-200"}, "health_check_expect",
     "load_balancing.health_check.expect: range '399-200' runs backwards (399 > 200)"),
    ({"health_check_interval": "5s", "health_check_timeout": "10s"}, "health_check_timeout",
     "load_balancing.health_check.timeout: timeout 10s is longer than the interval 5s"),
    ({"health_check_healthy": "0"}, "health_check_healthy", "load_balancing.health_check.healthy: healthy 0 out of range"),
    ({"health_check_path": "health"}, "health_check_path", "load_balancing.health_check.path: expected a path starting with /"),
    ({"passive_failures": "many"}, "passive_failures", "load_balancing.passive.failures: failures must be a whole number"),
    ({"passive_cooldown": "0s"}, "passive_cooldown", "load_balancing.passive.cooldown: duration '0s' must be more than zero"),
    ({"cache_stale_if_error": "a while"}, "cache_stale_if_error", "cache.stale_if_error: invalid duration 'a while'"),
    ({"rate_requests": "5", "rate_key": "header"}, "rate_key_header", "rate_limit.key: name the header"),
    ({"rate_requests": "5", "rate_key": "header", "rate_key_header": "X Api"}, "rate_key_header",
     "rate_limit.key: invalid header name 'X Api'"),
    ({"cors_methods": "GET"}, "cors_origins", "cors.origins: required key is missing"),
    ({"cors_origins": "https://app.home.test/"}, "cors_origins", "cors.origins[0]: origin 'https://app.home.test/' must look like"),
    ({"cors_origins": "*", "cors_credentials": "on"}, "cors_credentials", "cors.credentials: not allowed with origins [\"*\"]"),
    ({"cors_origins": "*", "cors_headers": "Bad Header"}, "cors_headers", "cors.headers[0]: invalid header name 'Bad Header'"),
    ({"cors_origins": "*", "cors_max_age": "long"}, "cors_max_age", "cors.max_age: invalid duration 'long'"),
    ({"forward_auth_timeout": "3s"}, "forward_auth_url", "forward_auth.url: required key is missing"),
    ({"forward_auth_url": "auth.lan/verify"}, "forward_auth_url", "forward_auth.url: URL 'auth.lan/verify' must be an absolute"),
    ({"forward_auth_url": "http://auth.lan/", "forward_auth_headers": "Connection"}, "forward_auth_headers",
     "forward_auth.response_headers[0]: Connection is managed by the proxy"),
    ({"forward_auth_url": "http://auth.lan/", "forward_auth_timeout": "0"}, "forward_auth_timeout",
     "forward_auth.timeout: duration 0 must be more than zero"),
])
def test_a_bad_value_is_reported_on_its_field_like_an_import_error(admin, overrides, field, message):
    response = admin.post("/hosts/add/", form_data(**overrides))
    assert response.status_code == 200
    errors = response.context["form"].errors
    assert any(error.startswith(message) for error in errors.get(field, [])), errors
    assert not ProxyHost.objects.exists() and not AuditEntry.objects.exists()


# -- purge ----------------------------------------------------------------------------


def test_purge_rejects_get_and_needs_login(client):
    item = host(cache=CACHE)
    assert client.post(f"/hosts/{item.pk}/status/purge/")["Location"].startswith("/login/")


def test_purge_bumps_the_generation_and_the_revision_with_an_audit_entry(as_user):
    item = host(cache=CACHE)
    browser = as_user(user("manager", "manage"))
    assert browser.get(f"/hosts/{item.pk}/status/purge/").status_code == 405
    page = browser.get(f"/hosts/{item.pk}/status/").content.decode()
    assert "Purge cache" in page and f"/hosts/{item.pk}/status/purge/" in page
    revision = current_revision()

    response = browser.post(f"/hosts/{item.pk}/status/purge/")

    assert response.status_code == 302 and response["Location"] == f"/hosts/{item.pk}/status/"
    item.refresh_from_db()
    assert item.cache_generation == 1 and current_revision() == revision + 1
    entry = AuditEntry.objects.get()
    assert entry.action == "purged cache" and entry.object_id == str(item.pk)
    assert (entry.before, entry.after) == ({"cache_generation": 0}, {"cache_generation": 1})
    assert "purged" in browser.get(response["Location"]).content.decode()
    browser.post(f"/hosts/{item.pk}/status/purge/")
    item.refresh_from_db()
    assert item.cache_generation == 2 and current_revision() == revision + 2


def test_purge_needs_the_manage_right_and_follows_ownership(as_user):
    viewer = user("viewer", "view")
    owner = user("owner", "manage", visibility="own")
    theirs = host(cache=CACHE)
    mine = host("mine.home.test", cache=CACHE, owner=owner)

    browser = as_user(viewer)
    assert "Purge cache" not in browser.get(f"/hosts/{theirs.pk}/status/").content.decode()
    assert browser.post(f"/hosts/{theirs.pk}/status/purge/").status_code == 403
    browser = as_user(owner)
    assert browser.post(f"/hosts/{theirs.pk}/status/purge/").status_code == 404
    assert browser.post(f"/hosts/{mine.pk}/status/purge/").status_code == 302

    assert ProxyHost.objects.get(pk=theirs.pk).cache_generation == 0
    assert ProxyHost.objects.get(pk=mine.pk).cache_generation == 1
    assert AuditEntry.objects.count() == 1


def test_purge_is_offered_only_where_something_is_cached(admin):
    plain = host(cache={"enabled": False, "default_ttl": 0.0, "stale_if_error": 0.0})
    assert "Purge cache" not in admin.get(f"/hosts/{plain.pk}/status/").content.decode()
    revision = current_revision()
    response = admin.post(f"/hosts/{plain.pk}/status/purge/", follow=True)
    assert "nothing to purge" in response.content.decode()
    assert ProxyHost.objects.get(pk=plain.pk).cache_generation == 0 and current_revision() == revision
    assert not AuditEntry.objects.exists()

    Location.objects.create(proxy_host=plain, path="/img/", cache=CACHE)
    assert "Purge cache" in admin.get(f"/hosts/{plain.pk}/status/").content.decode()


# -- upstream health ------------------------------------------------------------------


def test_a_host_without_checks_says_so(admin):
    item = host()
    EngineNode.report("gw:1", current_revision(), None, health={str(item.pk): {}})
    page = admin.get(f"/hosts/{item.pk}/status/").content.decode()
    assert "Upstream health" in page and "No health checks configured" in page


def test_the_health_panel_shows_what_the_live_nodes_report(admin):
    item = host(passive_health={"failures": 3, "window": 10.0, "cooldown": 30.0})
    since = time.time() - 90
    down = {"state": "down", "since": since, "reason": "connection refused"}
    up = {"state": "up", "since": since - 600, "reason": ""}
    EngineNode.report("gw:1", current_revision(), None,
                      health={str(item.pk): {"10.0.1.20:8096": down, "10.0.1.21:8096": up}})
    EngineNode.report("gw:2", current_revision(), None,
                      health={str(item.pk): {"10.0.1.20:8096": up, "10.0.1.21:8096": up}})
    stale = EngineNode.report("gw:old", current_revision(), None,
                              health={str(item.pk): {"10.0.1.21:8096": {"state": "down", "since": since, "reason": "gone"}}})
    EngineNode.objects.filter(pk=stale.pk).update(updated_at=stale.updated_at - EngineNode.GONE_AFTER * 2)

    page = admin.get(f"/hosts/{item.pk}/status/").content.decode().split("<h2>Upstream health</h2>")[1]

    first, second = page.split("http://10.0.1.20:8096")[1], page.split("http://10.0.1.21:8096")[1]
    assert "partly down" in first.split("</tr>")[0] and "down on 1 of 2 nodes" in first.split("</tr>")[0]
    assert "connection refused" in first.split("</tr>")[0]
    assert "up on 2 of 2 nodes" in second.split("</tr>")[0] and "gone" not in page
    panel = admin.get(f"/hosts/{item.pk}/status/?panel=health", HTTP_HX_REQUEST="true").content.decode()
    assert "<html" not in panel and 'hx-trigger="every 10s"' in panel and "down on 1 of 2 nodes" in panel


def test_an_upstream_down_everywhere_and_one_not_reported(admin):
    item = host(health_check={"path": "/health", "interval": 10.0, "timeout": 2.0, "expect": [200, 399],
                              "healthy": 2, "unhealthy": 3},
                upstreams=[UPSTREAMS[0], {"scheme": "http", "host": "2001:db8::5", "port": 8096, "weight": 1}])
    EngineNode.report("gw:1", current_revision(), None,
                      health={str(item.pk): {"10.0.1.20:8096": {"state": "down", "since": 1700000000.0,
                                                                "reason": "health check: status 503"}}})
    page = admin.get(f"/hosts/{item.pk}/status/").content.decode().split("<h2>Upstream health</h2>")[1]
    row = page.split("http://10.0.1.20:8096")[1].split("</tr>")[0]
    assert 'badge err">down' in row and "down on 1 of 1 node" in row and "2023-11-14 22:13:20" in row
    assert "health check: status 503" in row
    row = page.split("http://[2001:db8::5]:8096")[1].split("</tr>")[0]
    assert "not reported yet by the 1 node" in row

    EngineNode.report("gw:1", current_revision(), None,
                      health={str(item.pk): {"[2001:db8::5]:8096": {"state": "up", "since": 1700000000.0, "reason": ""}}})
    page = admin.get(f"/hosts/{item.pk}/status/?panel=health", HTTP_HX_REQUEST="true").content.decode()
    assert "up on 1 of 1 node" in page.split("http://[2001:db8::5]:8096")[1].split("</tr>")[0]


# -- runproxy's report_status ---------------------------------------------------------


def test_report_status_stores_a_cleaned_health_report_and_keeps_it_when_none_comes():
    report_status(7, None, (), {"3": {"10.0.1.20:8096": {"state": "down", "since": 1.5, "reason": "refused" * 100},
                                      "10.0.1.21:8096": {"state": "sideways"}},
                                "x": {"a:1": {"state": "up"}}, 4: {"10.0.1.22:80": {"state": "up", "since": "now"}}})
    node = EngineNode.objects.get()
    assert node.served_revision == 7
    assert node.upstream_health == {"3": {"10.0.1.20:8096": {"state": "down", "since": 1.5, "reason": ("refused" * 100)[:300]}},
                                    "4": {"10.0.1.22:80": {"state": "up", "since": None, "reason": ""}}}
    report_status(8, None)
    node.refresh_from_db()
    assert node.served_revision == 8 and "3" in node.upstream_health
    report_status(8, None, (), {})
    node.refresh_from_db()
    assert node.upstream_health == {}


# -- settings -------------------------------------------------------------------------


def valid_settings(**overrides):
    data = {"default_site_action": "404", "default_site_to": "", "default_site_body": "", "acme_email": "",
            "acme_directory": "https://acme.example.test/dir", "acme_ca_bundle": "", "tls_fallback": "self_signed",
            "trusted_proxies": ""}
    return {**data, **overrides}


def test_settings_show_and_save_the_cache_sizes(admin):
    form = admin.get("/settings/").context["form"]
    assert (form.initial["cache_memory_bytes"], form.initial["cache_disk_bytes"]) == ("64m", "0")
    response = admin.post("/settings/", valid_settings(cache_memory_bytes="256MiB", cache_disk_bytes="10g"))
    assert response.status_code == 302, response.context["form"].errors
    config = Settings.load()
    assert (config.cache_memory_bytes, config.cache_disk_bytes) == (256 * 1024**2, 10 * 1024**3)
    assert AuditEntry.objects.get().after["cache_disk_bytes"] == 10 * 1024**3
    form = admin.get("/settings/").context["form"]
    assert (form.initial["cache_memory_bytes"], form.initial["cache_disk_bytes"]) == ("256m", "10g")
    assert admin.post("/settings/", valid_settings()).status_code == 302
    config.refresh_from_db()
    assert (config.cache_memory_bytes, config.cache_disk_bytes) == (64 * 1024**2, 0)


@pytest.mark.parametrize("overrides, field, message", [
    ({"cache_memory_bytes": "512k"}, "cache_memory_bytes", "the memory cache needs at least 1m, got '512k'"),
    ({"cache_disk_bytes": "lots"}, "cache_disk_bytes", "invalid size 'lots'"),
    ({"cache_disk_bytes": "1000"}, "cache_disk_bytes", "the disk cache is 0 (off) or at least 1m, got 1000"),
])
def test_settings_refuse_bad_cache_sizes_on_their_field(admin, overrides, field, message):
    response = admin.post("/settings/", valid_settings(**overrides))
    assert response.status_code == 200
    assert any(message in error for error in response.context["form"].errors[field])
    assert Settings.load().cache_memory_bytes == 64 * 1024**2
