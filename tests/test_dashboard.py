import pytest
from django.contrib.auth import get_user_model

pytestmark = pytest.mark.django_db


def test_overview_requires_login(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


def test_login_page_explains_there_is_no_default_password(client):
    response = client.get("/login/")
    assert response.status_code == 200
    assert b"createsuperuser" in response.content
    assert b"csrfmiddlewaretoken" in response.content


def test_overview_lists_hosts_after_login(client):
    from manager.hosts.models import ProxyHost

    get_user_model().objects.create_superuser("admin", "a@example.test", "a-long-passphrase-42")
    ProxyHost.objects.create(domains=["grafana.home.test"], upstreams=[{"scheme": "http", "host": "10.0.0.9", "port": 3000, "weight": 1}])
    assert client.login(username="admin", password="a-long-passphrase-42")
    response = client.get("/")
    assert response.status_code == 200
    assert b"grafana.home.test" in response.content
    assert b"http://10.0.0.9:3000" in response.content


def test_logout_rejects_get(client):
    get_user_model().objects.create_user("admin", password="a-long-passphrase-42")
    client.login(username="admin", password="a-long-passphrase-42")
    assert client.get("/logout/").status_code == 405


def test_overview_shows_failed_and_expiring_certificates(client):
    from datetime import timedelta

    from django.utils import timezone

    from manager.certificates.models import Certificate

    get_user_model().objects.create_superuser("admin", "a@example.test", "a-long-passphrase-42")
    Certificate.objects.create(name="broken", status="error", last_error="the ACME server could not reach http://x/: connection refused")
    Certificate.objects.create(name="soon", status="valid", expires_at=timezone.now() + timedelta(days=5))
    Certificate.objects.create(name="fine", status="valid", expires_at=timezone.now() + timedelta(days=80))
    client.login(username="admin", password="a-long-passphrase-42")
    page = client.get("/").content.decode()
    assert "Certificates needing attention" in page
    assert "broken" in page and "connection refused" in page and "soon" in page
    assert ">fine<" not in page


def test_overview_shows_only_what_the_user_may_see(client):
    from manager.accounts.models import Profile
    from manager.certificates.models import Certificate
    from manager.hosts.models import ProxyHost

    viewer = get_user_model().objects.create_user("viewer", password="a-long-passphrase-42")
    Profile.objects.create(user=viewer, proxy_hosts="view", visibility="own")
    upstream = [{"scheme": "http", "host": "10.0.0.9", "port": 3000, "weight": 1}]
    ProxyHost.objects.create(domains=["mine.home.test"], upstreams=upstream, owner=viewer)
    ProxyHost.objects.create(domains=["theirs.home.test"], upstreams=upstream)
    Certificate.objects.create(name="secretcert", status="error", last_error="boom")
    client.login(username="viewer", password="a-long-passphrase-42")
    page = client.get("/").content.decode()
    assert "mine.home.test" in page
    assert "theirs.home.test" not in page and "secretcert" not in page
