"""The certificate pages in a real browser (headless Chromium through Playwright)."""
import os

import pytest
import trustme
from django.contrib.auth import get_user_model

from manager.certificates.models import Certificate
from tests.e2e.browser import ARGS, CHROMIUM, chromium, log_in  # noqa: F401 (ARGS, CHROMIUM: were defined here)

# Playwright's sync API runs an event loop in this thread; the ORM calls below are plain
# synchronous test code, not async views.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
PASSWORD = "a-long-passphrase-42"


@pytest.fixture
def page(live_server, tmp_path):
    get_user_model().objects.create_superuser("admin", "admin@example.test", PASSWORD)
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        page.set_default_timeout(10_000)
        log_in(page, live_server.url, "admin", PASSWORD)
        yield page


def test_uploading_a_certificate_in_the_browser_shows_errors_then_the_certificate(page, live_server):
    ca = trustme.CA()
    leaf, other = ca.issue_cert("nas.home.test"), ca.issue_cert("other.home.test")

    page.click("text=Certificates")
    page.click("text=Upload a custom certificate")
    page.fill("#id_name", "nas")
    page.fill("#id_certificate_pem", leaf.cert_chain_pems[0].bytes().decode())
    page.fill("#id_key_pem", other.private_key_pem.bytes().decode())
    page.click("main button[type=submit]")
    assert page.locator(".errorlist").inner_text() == "the private key does not match the certificate"
    assert not Certificate.objects.exists()

    page.fill("#id_key_pem", leaf.private_key_pem.bytes().decode())
    page.click("main button[type=submit]")
    page.wait_for_selector("text=Certificate nas saved")
    assert page.locator(".badge.ok").inner_text() == "valid"
    assert "stored (never shown)" in page.content()

    page.click("text=All certificates")
    assert "nas.home.test" in page.locator("#certificate-rows").inner_text()


def test_a_requested_certificate_shows_its_progress_live(page, live_server):
    page.goto(live_server.url + "/certificates/request/")
    page.fill("#id_name", "home")
    page.fill("#id_domains", "app.home.test")
    page.click("main button[type=submit]")
    page.wait_for_selector("text=this page shows its progress")
    assert "queued" in page.locator("#certificate-state").inner_text()

    # No worker runs in this test: the failure is written as the worker would, and the
    # page (polling with htmx) shows it without a reload.
    Certificate.objects.filter(name="home").update(
        progress="failed", status="error",
        last_error="the ACME server could not reach http://app.home.test/.well-known/acme-challenge/x: connection refused")
    page.wait_for_selector("#certificate-state >> text=connection refused")
    assert page.locator("#certificate-state .badge.err").inner_text() == "failed"
