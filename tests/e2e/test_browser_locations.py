"""The proxy host form's Locations rows in a real browser (headless Chromium through
Playwright): rows added with htmx, overrides shown once set, a row removed; and the same
form without JavaScript."""
import os

import pytest
from django.contrib.auth import get_user_model

from manager.hosts.models import Location, ProxyHost
from tests.e2e.browser import chromium, log_in

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
PASSWORD = "a-long-passphrase-42"


@pytest.fixture
def browser(live_server):
    get_user_model().objects.create_superuser("admin", "admin@example.test", PASSWORD)
    with chromium() as browser:
        yield browser


def logged_in(browser, live_server, javascript=True):
    page = browser.new_page(viewport={"width": 1100, "height": 800}, java_script_enabled=javascript)
    page.set_default_timeout(10_000)
    log_in(page, live_server.url, "admin", PASSWORD)
    return page


def shot(page, name):
    folder = os.environ.get("GATEHOUSE_SCREENSHOTS")
    if folder:
        page.locator("#locations").screenshot(path=os.path.join(folder, f"{name}.png"))


def test_adding_setting_and_removing_location_rows(browser, live_server):
    page = logged_in(browser, live_server)
    page.goto(live_server.url + "/hosts/add/")
    page.fill("#id_domains", "media.home.test")
    page.fill("#id_upstreams", "http://10.0.1.20:8096")
    page.click("#add-location")
    page.wait_for_selector("#id_locations-0-path")
    assert page.evaluate("document.activeElement.id") == "id_locations-0-path"
    # An override's details appear once it is set.
    assert not page.is_visible("#id_locations-0-cache_ttl")
    page.get_by_label("Path").first.fill("/api/")
    page.select_option("#id_locations-0-cache_mode", "on")
    page.fill("#id_locations-0-cache_ttl", "1m")
    page.select_option("#id_locations-0-compression_mode", "off")
    page.click("#add-location")
    page.wait_for_selector("#id_locations-1-path")
    page.fill("#id_locations-1-path", "/gone/")
    page.click("#add-location")
    page.wait_for_selector("#id_locations-2-path")
    page.fill("#id_locations-2-path", "/static/")
    page.select_option("#id_locations-2-cache_mode", "on")
    page.fill("#id_locations-2-cache_ttl", "soon")
    page.check("#id_locations-1-remove")
    shot(page, "locations-editor")
    page.click("main form.sections > button[type=submit]")
    # The error lands on the row, the rows keep what was typed.
    page.wait_for_selector("text=A location has errors")
    assert "locations[1].cache.default_ttl: invalid duration 'soon'" in page.inner_text("#location-2")
    assert page.input_value("#id_locations-0-path") == "/api/"
    shot(page, "locations-error")
    page.fill("#id_locations-2-cache_ttl", "1d")
    page.click("main form.sections > button[type=submit]")
    page.wait_for_selector("text=saved")
    host = ProxyHost.objects.get()
    assert list(host.locations.values_list("path", flat=True)) == ["/api/", "/static/"]
    api = Location.objects.get(path="/api/")
    assert api.cache["default_ttl"] == 60.0 and api.compression == [] and api.rate_limit is None


def test_without_javascript_existing_rows_edit_and_the_empty_row_adds_one(browser, live_server):
    host = ProxyHost.objects.create(domains=["media.home.test"],
                                    upstreams=[{"scheme": "http", "host": "10.0.1.20", "port": 8096, "weight": 1}])
    Location.objects.create(proxy_host=host, path="/api/", compression=["gzip"])
    page = logged_in(browser, live_server, javascript=False)
    page.goto(live_server.url + f"/hosts/{host.pk}/edit/")
    assert not page.is_visible("#add-location")
    page.select_option("#id_locations-0-compression_mode", "inherit")
    page.fill("#id_locations-1-path", "/static/")
    page.select_option("#id_locations-1-cache_mode", "off")
    page.click("main form.sections > button[type=submit]")
    page.wait_for_selector("text=saved")
    assert list(host.locations.values_list("path", "compression", "cache")) == [
        ("/api/", None, None), ("/static/", None, {"enabled": False, "default_ttl": 0.0, "stale_if_error": 0.0})]
