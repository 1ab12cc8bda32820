"""Traffic features in the dashboard, in headless Chromium, against the real engine process:
an admin sets up load balancing with an active health check in the proxy host form and
watches the host's "Upstream health" panel follow the engine's reports (both up, then one
killed upstream down); then enables the cache, sees hits through the engine, and presses
"Purge cache" so that the next request is fetched from the upstream again.

The engine reports upstream health with its status: on every reload and about a second
after an upstream flips (proxy_engine/reload.py `health_changed`), so the panel's htmx
refresh (every 10 s) is the slowest link; every wait below is bounded."""
import json
import os

import pytest
from django.contrib.auth import get_user_model
from django.db import connection

from manager.hosts.models import ProxyHost
from tests.e2e.test_browser_certificates import ARGS, CHROMIUM
from tests.e2e.traffic_support import Recording, kill, seen, serve, url, wait_until
from tests.live import runproxy

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
PASSWORD = "a-long-passphrase-42"
HOST = "shop.example.test"
PANEL_REFRESH = 10          # seconds between htmx refreshes of the health panel


@pytest.fixture(scope="module")
def engine(tmp_path_factory, django_db_setup):
    proxy = runproxy(connection.settings_dict["NAME"], tmp_path_factory.mktemp("engine-data"), poll_interval=0.2)
    proxy.wait_for(lambda response, body: b"no host configured" in body, timeout=30, host="nothing.example.test")
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not os.path.exists(CHROMIUM):
        pytest.fail("chromium is not installed (apt-get install chromium)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def upstreams():
    servers = {name: serve(Recording, name) for name in ("a", "b")}
    yield servers
    for server in servers.values():
        kill(server)


@pytest.fixture
def page(live_server, browser):
    get_user_model().objects.create_superuser("admin", "admin@example.test", PASSWORD)
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.goto(live_server.url + "/login/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", PASSWORD)
    page.click("main button[type=submit]")
    page.wait_for_url(live_server.url + "/")
    yield page
    context.close()


def through_engine(engine, path):
    response, body = engine.request("GET", path, host=HOST)
    return response, body


def served_by(engine, path):
    response, body = through_engine(engine, path)
    return json.loads(body)["server"] if response.status == 200 and body.startswith(b"{") else response.status


def health_row(page, server):
    return page.locator(f"#upstream-health tr:has(code:text-is('{url(server)}'))")


def test_load_balancing_form_and_the_upstream_health_panel(page, live_server, engine, upstreams):
    a, b = upstreams["a"], upstreams["b"]

    # The form: two upstreams, a policy and an active health check.
    page.click("nav >> text=Proxy hosts")
    page.click("text=Add a proxy host")
    page.fill("#id_domains", HOST)
    page.fill("#id_upstreams", f"{url(a)}\n{url(b)}")
    page.select_option("#id_lb_policy", "round_robin")
    page.fill("#id_health_check_path", "/health")
    page.fill("#id_health_check_interval", "1s")
    page.fill("#id_health_check_healthy", "1")
    page.fill("#id_health_check_unhealthy", "2")
    page.click("main button[type=submit]")
    page.wait_for_selector(f"text={HOST} saved")
    host = ProxyHost.objects.get(domains=[HOST])
    assert host.lb_policy == "round_robin"
    assert (host.health_check["path"], host.health_check["interval"]) == ("/health", 1.0)

    # The engine serves it from both upstreams, and checks both.
    engine.wait_for(lambda response, body: response.status == 200, timeout=15, host=HOST, path="/ready")
    answers = [served_by(engine, f"/item/{i}") for i in range(4)]
    assert sorted(answers) == ["a", "a", "b", "b"], answers
    wait_until(lambda: len(a.probes) >= 1 and len(b.probes) >= 1, 15, "the engine's health checks on both upstreams")

    # The status page's panel: both up.
    page.goto(f"{live_server.url}/hosts/{host.pk}/status/")
    for server in (a, b):
        row = health_row(page, server)
        wait_until(lambda: reload_until(page, row, ".badge.ok"), 20, f"the panel to show {url(server)} up")
        assert "up on 1 of" in row.inner_text()

    # b is killed: the panel turns it down on its own (htmx refresh), a stays up.
    kill(b)
    health_row(page, b).locator(".badge.err").wait_for(timeout=(PANEL_REFRESH + 15) * 1000)
    assert "health check failed" in health_row(page, b).inner_text()
    assert health_row(page, a).locator(".badge.ok").count() == 1
    before = len(seen(a))
    assert [served_by(engine, f"/after/{i}") for i in range(4)] == ["a"] * 4
    assert [e["path"] for e in seen(a)[before:]] == [f"/after/{i}" for i in range(4)]


def reload_until(page, row, selector):
    """The panel as the page renders it now (a fresh load, not waiting for htmx)."""
    if row.locator(selector).count():
        return True
    page.wait_for_timeout(250)
    page.reload()
    return False


def test_cache_section_hits_and_the_purge_button(page, live_server, engine, upstreams):
    a = upstreams["a"]
    page.click("nav >> text=Proxy hosts")
    page.click("text=Add a proxy host")
    page.fill("#id_domains", HOST)
    page.fill("#id_upstreams", url(a))
    page.click("main button[type=submit]")
    page.wait_for_selector(f"text={HOST} saved")
    engine.wait_for(lambda response, body: response.status == 200, timeout=15, host=HOST, path="/ready")
    assert through_engine(engine, "/cached/plain")[0].getheader("X-Cache-Status") is None

    # Enable the cache in the edit form.
    page.click(f"#row-{ProxyHost.objects.get(domains=[HOST]).pk} >> text=Edit")
    page.check("#id_cache_enabled")
    page.fill("#id_cache_ttl", "1m")
    page.click("main button[type=submit]")
    page.wait_for_selector(f"text={HOST} saved")
    host = ProxyHost.objects.get(domains=[HOST])
    assert host.cache["enabled"] and host.cache["default_ttl"] == 60.0

    # Through the engine: a miss, then a hit the upstream never sees.
    engine.wait_for(lambda response, body: response.getheader("X-Cache-Status") is not None, timeout=15,
                    host=HOST, path="/cached/ready")
    first, first_body = through_engine(engine, "/cached/photo")
    second, second_body = through_engine(engine, "/cached/photo")
    assert (first.getheader("X-Cache-Status"), second.getheader("X-Cache-Status")) == ("MISS", "HIT")
    assert second_body == first_body and len(seen(a, "/cached/photo")) == 1

    # "Purge cache" on the host's page (after the confirmation dialog).
    page.goto(f"{live_server.url}/hosts/{host.pk}/status/")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("text=Purge cache")
    page.wait_for_selector(f"text=Cache of {HOST} purged")
    assert ProxyHost.objects.get(pk=host.pk).cache_generation == host.cache_generation + 1

    def not_a_hit():
        response, body = through_engine(engine, "/cached/photo")
        return None if response.getheader("X-Cache-Status") == "HIT" else (response.getheader("X-Cache-Status"), body)

    status, body = wait_until(not_a_hit, 15, "a request after the purge that is not a cache hit")
    assert status == "MISS" and json.loads(body)["serial"] == 2
    assert len(seen(a, "/cached/photo")) == 2
