"""The reachability check against the real engine process: a probe token published
through the database, served by the engine, fetched by the name as an ACME server would."""
import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import override_settings

from manager.certificates.models import AcmeChallenge
from manager.certificates.probe import check
from tests.live import free_port, runproxy, start_upstream, stop_upstream

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def engine(tmp_path):
    proxy = runproxy(connection.settings_dict["NAME"], tmp_path / "engine-data", poll_interval=0.2)
    proxy.wait_for(lambda response, body: response.status in (200, 404), host="nothing.example.test")
    yield proxy
    proxy.stop()


def test_a_name_that_reaches_the_engine_passes(engine):
    with override_settings(HTTP_PORT=engine.port, PUBLIC_HTTP_PORT=engine.port):
        result = check("localhost")
    assert result.ok, result.message
    assert f"http://localhost:{engine.port}/.well-known/acme-challenge/" in result.message
    assert not AcmeChallenge.objects.exists(), "the probe token must be withdrawn"


def test_each_failure_is_named(engine):
    other = start_upstream("not-the-proxy")
    closed = free_port()
    try:
        with override_settings(HTTP_PORT=engine.port, PUBLIC_HTTP_PORT=engine.port):
            unresolved = check("nothing-here.invalid")
        with override_settings(HTTP_PORT=engine.port, PUBLIC_HTTP_PORT=closed):
            refused = check("localhost")
        with override_settings(HTTP_PORT=engine.port, PUBLIC_HTTP_PORT=other.server_address[1]):
            elsewhere = check("localhost")
        with override_settings(HTTP_PORT=closed, PUBLIC_HTTP_PORT=closed):
            no_engine = check("localhost", timeout=0.5)
    finally:
        stop_upstream(other)
    assert not unresolved.ok and "does not resolve in DNS" in unresolved.message
    assert not refused.ok and refused.message.endswith("(127.0.0.1): connection refused")
    assert not elsewhere.ok and "answered by something else (HTTP 200)" in elsewhere.message
    assert not no_engine.ok and "does not answer challenges" in no_engine.message
    assert not AcmeChallenge.objects.exists()


def test_the_request_page_checks_names_through_htmx(engine, client):
    get_user_model().objects.create_superuser("admin", "a@example.test", "a-long-passphrase-42")
    client.login(username="admin", password="a-long-passphrase-42")
    assert client.get("/certificates/request/check/").status_code == 405
    with override_settings(HTTP_PORT=engine.port, PUBLIC_HTTP_PORT=engine.port):
        page = client.post("/certificates/request/check/", {"domains": "localhost\nbad name"}, HTTP_HX_REQUEST="true")
    text = page.content.decode()
    assert page.status_code == 200
    assert 'badge ok">reachable</span> <strong>localhost</strong>' in " ".join(text.split())
    assert "invalid domain name &#x27;bad name&#x27;" in text
