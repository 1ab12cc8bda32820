import os

import pytest
import trustme
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile

from manager.certificates.models import Certificate
from manager.hosts.models import ProxyHost
from tests.conftest import make_user

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def pems():
    ca = trustme.CA()
    leaf = ca.issue_cert("nas.home.test", "*.apps.home.test")
    other = ca.issue_cert("other.home.test")
    return {
        "cert": leaf.cert_chain_pems[0].bytes().decode(), "key": leaf.private_key_pem.bytes().decode(),
        "chain": ca.cert_pem.bytes().decode(), "other_key": other.private_key_pem.bytes().decode(),
    }


def user(name, certificates="hidden", superuser=False, visibility="all"):
    """A dashboard user with the given level for certificates (hidden | view | manage)."""
    return make_user(name, superuser, certificates=certificates, visibility=visibility)


def test_pages_require_login(client):
    assert client.get("/certificates/").status_code == 302


def test_an_outsider_without_permission_is_refused(as_user):
    browser = as_user(user("outsider"))
    assert browser.get("/certificates/").status_code == 403
    assert browser.get("/certificates/upload/").status_code == 403


def test_a_viewer_sees_the_list_but_cannot_upload_or_delete(as_user, pems):
    cert = Certificate.objects.create(name="home", provider="custom", domains=["nas.home.test"], certificate_pem=pems["cert"],
                                      key_pem=pems["key"], status="valid")
    browser = as_user(user("viewer", "view"))
    page = browser.get("/certificates/")
    assert page.status_code == 200 and b"nas.home.test" in page.content
    assert b"Upload a custom certificate" not in page.content
    assert browser.get("/certificates/upload/").status_code == 403
    assert browser.post(f"/certificates/{cert.pk}/delete/").status_code == 403
    assert Certificate.objects.filter(pk=cert.pk).exists()


def test_visibility_own_hides_other_users_certificates(as_user):
    mine = user("me", "manage", visibility="own")
    theirs = Certificate.objects.create(name="theirs", domains=["a.home.test"], status="valid")
    Certificate.objects.create(name="mine", domains=["b.home.test"], status="valid", owner=mine)
    browser = as_user(mine)
    page = browser.get("/certificates/").content.decode()
    assert "b.home.test" in page and "a.home.test" not in page
    assert browser.get(f"/certificates/{theirs.pk}/").status_code == 404
    assert browser.post(f"/certificates/{theirs.pk}/delete/").status_code == 404
    assert Certificate.objects.filter(pk=theirs.pk).exists()


def test_htmx_refresh_renders_only_the_rows(as_user):
    Certificate.objects.create(name="home", domains=["app.home.test"], status="pending")
    page = as_user(user("admin", superuser=True)).get("/certificates/", HTTP_HX_REQUEST="true")
    assert page.status_code == 200
    assert b"<h1>" not in page.content and b"app.home.test" in page.content and b"pending" in page.content


def test_uploading_a_matching_pair_stores_it_with_its_names_and_never_shows_the_key(as_user, pems):
    browser = as_user(user("admin", superuser=True))
    response = browser.post("/certificates/upload/", {
        "name": "nas", "certificate_pem": pems["cert"], "key_pem": pems["key"],
        "chain_file": SimpleUploadedFile("chain.pem", pems["chain"].encode()),
    })
    cert = Certificate.objects.get(name="nas")
    assert response.status_code == 302 and response["Location"] == f"/certificates/{cert.pk}/"
    assert (cert.provider, cert.status, cert.domains) == ("custom", "valid", ["nas.home.test", "*.apps.home.test"])
    assert cert.chain_pem.strip() == pems["chain"].strip() and cert.expires_at is not None
    detail = browser.get(f"/certificates/{cert.pk}/")
    assert b"stored (never shown)" in detail.content
    assert pems["key"].splitlines()[1].encode() not in detail.content


@pytest.mark.parametrize("fields, field, message", [
    ({"certificate_pem": "", "key_pem": "KEY"}, "certificate_pem", "a certificate is required"),
    ({"certificate_pem": "-----BEGIN CERTIFICATE-----\nbm9wZQ==\n-----END CERTIFICATE-----", "key_pem": "cert"},
     "certificate_pem", "certificate PEM does not parse"),
    ({"certificate_pem": "cert", "key_pem": "other_key"}, "key_pem", "the private key does not match the certificate"),
    ({"certificate_pem": "cert", "key_pem": "not a key"}, "key_pem", "not a PEM private key"),
])
def test_a_bad_upload_names_the_problem_and_saves_nothing(as_user, pems, fields, field, message):
    data = {"name": "bad"}
    for key, value in fields.items():
        data[key] = pems.get(value, value)
    response = as_user(user("admin", superuser=True)).post("/certificates/upload/", data)
    assert response.status_code == 200
    assert any(message in error for error in response.context["form"].errors[field]), response.context["form"].errors
    assert not Certificate.objects.exists()


def test_deleting_requires_post_and_refuses_a_certificate_in_use(as_user, pems):
    cert = Certificate.objects.create(name="home", provider="custom", domains=["nas.home.test"], status="valid")
    ProxyHost.objects.create(domains=["nas.home.test"], upstreams=[{"scheme": "http", "host": "10.0.0.2", "port": 80, "weight": 1}],
                             certificate=cert)
    browser = as_user(user("admin", superuser=True))
    assert browser.get(f"/certificates/{cert.pk}/delete/").status_code == 405
    response = browser.post(f"/certificates/{cert.pk}/delete/", follow=True)
    assert b"is used by nas.home.test" in response.content
    assert Certificate.objects.filter(pk=cert.pk).exists()
    ProxyHost.objects.all().delete()
    browser.post(f"/certificates/{cert.pk}/delete/")
    assert not Certificate.objects.filter(pk=cert.pk).exists()


def queued_tasks():
    """Task messages the view handed to the real (filesystem) Celery broker."""
    folder = settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_out"]
    return [open(os.path.join(folder, name), encoding="utf-8", errors="replace").read() for name in os.listdir(folder)]


@pytest.fixture
def empty_broker():
    folder = settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_out"]
    for name in os.listdir(folder):
        os.remove(os.path.join(folder, name))


def test_requesting_a_certificate_creates_it_and_queues_the_issuance(as_user, empty_broker):
    browser = as_user(user("admin", superuser=True))
    response = browser.post("/certificates/request/", {"name": "home", "domains": "App.Home.test\nnas.home.test, app.home.test"})
    cert = Certificate.objects.get(name="home")
    assert response.status_code == 302 and response["Location"] == f"/certificates/{cert.pk}/"
    assert (cert.provider, cert.domains, cert.progress) == ("letsencrypt", ["app.home.test", "nas.home.test"], "queued")
    (message,) = queued_tasks()
    assert "manager.certificates.tasks.issue_certificate" in message
    state = browser.get(f"/certificates/{cert.pk}/", HTTP_HX_REQUEST="true").content.decode()
    assert "queued" in state and 'hx-trigger="every 2s"' in state


def test_a_wildcard_request_is_refused_with_the_reason(as_user, empty_broker):
    response = as_user(user("admin", superuser=True)).post("/certificates/request/", {"name": "wild", "domains": "*.home.test"})
    assert response.status_code == 200
    assert "only be validated with DNS-01" in " ".join(response.context["form"].errors["domains"])
    assert not Certificate.objects.exists() and queued_tasks() == []


def test_renewing_needs_post_and_change_permission_and_an_acme_certificate(as_user, pems, empty_broker):
    acme_cert = Certificate.objects.create(name="home", provider="letsencrypt", domains=["app.home.test"], status="valid")
    custom = Certificate.objects.create(name="nas", provider="custom", domains=["nas.home.test"], status="valid")
    viewer = as_user(user("viewer", "view"))
    assert viewer.post(f"/certificates/{acme_cert.pk}/renew/").status_code == 403
    admin = as_user(user("admin", superuser=True))
    assert admin.get(f"/certificates/{acme_cert.pk}/renew/").status_code == 405
    assert b"upload a new one instead" in admin.post(f"/certificates/{custom.pk}/renew/", follow=True).content
    admin.post(f"/certificates/{acme_cert.pk}/renew/")
    acme_cert.refresh_from_db()
    assert acme_cert.progress == "queued" and len(queued_tasks()) == 1


def test_the_reachability_check_needs_add_permission(as_user):
    response = as_user(user("viewer", "view")).post("/certificates/request/check/", {"domains": "localhost"})
    assert response.status_code == 403
