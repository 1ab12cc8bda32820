"""Host status page, "Test upstream" and the request id lookup: login, rights, ownership."""
import pytest

from manager.hosts.models import EngineNode, ProxyHost, UpstreamError
from manager.hosts.revision import current_revision
from tests.live import free_port
from tests.conftest import make_user

pytestmark = pytest.mark.django_db


def user(name, proxy_hosts="hidden", superuser=False, visibility="all"):
    return make_user(name, superuser, proxy_hosts=proxy_hosts, visibility=visibility)


def host(owner=None, port=None, domain="app.home.test"):
    return ProxyHost.objects.create(domains=[domain], owner=owner,
                                    upstreams=[{"scheme": "http", "host": "127.0.0.1", "port": port or free_port(), "weight": 1}])


def test_pages_require_login(client):
    h = host()
    for url in (f"/hosts/{h.pk}/status/", "/lookup/?request_id=x"):
        assert client.get(url)["Location"].startswith("/login/")
    assert client.post(f"/hosts/{h.pk}/status/test/")["Location"].startswith("/login/")


def test_status_needs_the_view_right_and_hides_other_owners_hosts(as_user):
    owner = user("owner", "view", visibility="own")
    mine, theirs = host(owner), host(None, domain="other.home.test")
    client = as_user(user("nobody"))
    assert client.get(f"/hosts/{mine.pk}/status/").status_code == 403
    client = as_user(owner)
    assert client.get(f"/hosts/{mine.pk}/status/").status_code == 200
    assert client.get(f"/hosts/{theirs.pk}/status/").status_code == 404
    assert client.post(f"/hosts/{theirs.pk}/status/test/").status_code == 404
    assert client.get("/hosts/999999/status/").status_code == 404


def test_status_page_shows_pending_then_applied_and_the_hosts_errors(as_user):
    h = host()
    UpstreamError.objects.create(proxy_host=h, request_id="abcd0001-1f", upstream="10.0.1.10:3000", status=502,
                                 cause="connection refused by the upstream service", detail="Connection was refused")
    client = as_user(user("admin", superuser=True))
    page = client.get(f"/hosts/{h.pk}/status/").content.decode()
    assert "no engine" in page and "abcd0001-1f" in page
    assert "connection refused by the upstream service (10.0.1.10:3000) at" in page
    EngineNode.report("gw:1", current_revision() - 1, None)
    panel = client.get(f"/hosts/{h.pk}/status/?panel=status", HTTP_HX_REQUEST="true").content.decode()
    assert "pending" in panel and 'hx-trigger="every 2s"' in panel and "<html" not in panel
    EngineNode.report("gw:1", current_revision(), None)
    panel = client.get(f"/hosts/{h.pk}/status/?panel=status", HTTP_HX_REQUEST="true").content.decode()
    assert "applied" in panel and "hx-trigger" not in panel
    EngineNode.report("gw:1", current_revision() - 1, "invalid snapshot: proxy_hosts[0].domains: bad", [h.pk])
    page = client.get(f"/hosts/{h.pk}/status/").content.decode()
    assert "badge err" in page and "proxy_hosts[0].domains: bad" in page


def test_test_upstream_is_post_only_and_explains_a_refused_connection(as_user):
    port = free_port()
    h = host(port=port)
    client = as_user(user("viewer", "view"))
    assert client.get(f"/hosts/{h.pk}/status/test/").status_code == 405
    response = client.post(f"/hosts/{h.pk}/status/test/", HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert f"the engine would answer 502: connection refused by 127.0.0.1:{port}" in response.content.decode()


def test_lookup_finds_a_request_id_only_for_users_who_may_see_its_host(as_user):
    owner = user("owner", "view", visibility="own")
    mine, theirs = host(owner), host(None, domain="other.home.test")
    UpstreamError.objects.create(proxy_host=mine, request_id="aaaa0001-1", upstream="10.0.1.10:3000", status=502,
                                 cause="connection refused by the upstream service", detail="refused")
    UpstreamError.objects.create(proxy_host=theirs, request_id="aaaa0001-2", upstream="10.0.1.11:80", status=504,
                                 cause="the upstream service timed out")
    client = as_user(owner)
    page = client.get("/lookup/?request_id=aaaa0001-1").content.decode()
    assert "app.home.test" in page and "10.0.1.10:3000" in page and "connection refused" in page
    page = client.get("/lookup/?request_id=aaaa0001-2").content.decode()
    assert "10.0.1.11" not in page and "No upstream error" in page
    client = as_user(user("nobody"))
    page = client.get("/lookup/?request_id=aaaa0001-1").content.decode()
    assert "10.0.1.10" not in page and "No upstream error" in page


def test_overview_counts_states_and_lists_latest_errors_and_workers(as_user):
    h = host()
    ProxyHost.objects.create(domains=["off.home.test"], enabled=False,
                             upstreams=[{"scheme": "http", "host": "127.0.0.1", "port": 1, "weight": 1}])
    UpstreamError.objects.create(proxy_host=h, request_id="bbbb0001-1", upstream="10.0.1.10:3000", status=502,
                                 cause="connection refused by the upstream service")
    EngineNode.report("gw:42", 9, None)
    page = as_user(user("admin", superuser=True)).get("/").content.decode()
    assert "Latest upstream errors" in page and "bbbb0001-1" in page
    assert "gw:42: revision 9" in page and f"/hosts/{h.pk}/status/" in page
    assert 'badge err">error' in page and 'badge">disabled' in page
