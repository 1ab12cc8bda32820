"""A new user's first session, in headless Chromium, against the real engine process:
create the first admin, log in, add a proxy host to a test upstream, open it through the
engine, edit it and see the change served, disable it, add a view-only user and see what
that user can and cannot do.

Set GATEHOUSE_SCREENSHOTS=DIR to save screenshots of the pages on the way (docs/screenshots
in the repository are made this way)."""
import json
import os

import pytest
from django.db import connection

from tests.e2e.browser import chromium, log_in
from tests.live import runproxy, start_upstream, stop_upstream

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
ADMIN_PASSWORD = "first-admin-passphrase-91"
VIEWER_PASSWORD = "viewer-passphrase-73"


def served_by(name):
    return lambda response, body: body.startswith(b"{") and json.loads(body)["server"] == name


def default_site(response, body):
    return b"no host configured" in body


@pytest.fixture
def upstreams():
    servers = {name: start_upstream(name) for name in ("a", "b")}
    yield servers
    for server in servers.values():
        stop_upstream(server)


@pytest.fixture
def engine(tmp_path):
    proxy = runproxy(connection.settings_dict["NAME"], tmp_path / "engine-data", poll_interval=0.2)
    proxy.wait_for(default_site, host="nothing.example.test")
    yield proxy
    proxy.stop()


@pytest.fixture
def browser():
    with chromium() as browser:
        yield browser


def shot(page, name):
    folder = os.environ.get("GATEHOUSE_SCREENSHOTS")
    if folder:
        os.makedirs(folder, exist_ok=True)
        page.screenshot(path=os.path.join(folder, f"{name}.png"), full_page=True)


def url_of(server):
    return f"http://127.0.0.1:{server.server_address[1]}"


def test_a_new_users_first_session(live_server, engine, upstreams, browser):
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    page.set_default_timeout(10_000)

    # No account exists: the login page offers the one-time setup page.
    page.goto(live_server.url + "/login/")
    page.click("text=create the first administrator")
    page.fill("#id_username", "admin")
    page.fill("#id_password1", ADMIN_PASSWORD)
    page.fill("#id_password2", ADMIN_PASSWORD)
    page.click("main button[type=submit]")
    page.wait_for_url(live_server.url + "/")
    assert page.request.get(live_server.url + "/setup/").status == 404, "setup must vanish once a user exists"

    # Add a proxy host to upstream a, and open it through the engine.
    page.click("nav >> text=Proxy hosts")
    page.click("text=Add a proxy host")
    shot(page, "proxy-host-form")
    page.fill("#id_domains", "app.example.test")
    page.fill("#id_upstreams", "http://127.0.0.1:70000")
    page.click("main button[type=submit]")
    assert "port 70000 out of range" in page.locator("main").inner_text(), "the error is shown next to the field"
    page.fill("#id_upstreams", url_of(upstreams["a"]))
    page.click("main button[type=submit]")
    page.wait_for_selector("text=app.example.test")
    engine.wait_for(served_by("a"))
    shot(page, "proxy-hosts")

    # Edit it to upstream b: the engine serves the change without a restart.
    page.click("text=Edit")
    page.fill("#id_upstreams", url_of(upstreams["b"]))
    page.click("main button[type=submit]")
    page.wait_for_selector("text=app.example.test")
    engine.wait_for(served_by("b"))

    # Disable it in place (htmx): the engine falls back to the default site.
    page.click("button.toggle")
    page.wait_for_selector("button.toggle:not(.on)")
    engine.wait_for(default_site)

    # Add a user who may only view proxy hosts.
    page.click("nav >> text=Users")
    page.click("text=Add a user")
    page.fill("#id_username", "viewer")
    page.fill("#id_password", VIEWER_PASSWORD)
    page.check("input[name=visibility][value=all]")
    page.check("input[name=proxy_hosts][value=view]")
    shot(page, "user-form")
    page.click("main button[type=submit]")
    page.wait_for_selector("text=User viewer created")
    shot(page, "users")

    # The viewer sees the host but cannot change it, and the admin pages are closed.
    viewer = browser.new_page(viewport={"width": 390, "height": 844})   # a phone-sized screen
    viewer.set_default_timeout(10_000)
    log_in(viewer, live_server.url, "viewer", VIEWER_PASSWORD)
    viewer.click("nav >> text=Proxy hosts")
    listing = viewer.locator("main").inner_text()
    assert "app.example.test" in listing
    assert viewer.locator("text=Add a proxy host").count() == 0 and viewer.locator("button.toggle").count() == 0
    shot(viewer, "proxy-hosts-viewer-phone")
    assert viewer.locator("nav >> text=Users").count() == 0
    assert viewer.request.get(live_server.url + "/users/").status == 403
    assert viewer.request.get(live_server.url + "/certificates/").status == 403
