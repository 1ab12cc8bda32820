"""Dashboard: the Let's Encrypt form's challenge choice and the DNS providers page
(the certificates rights, POST-only mutations, secrets write-only)."""
import pytest

from manager.certificates.forms import DnsProviderForm, LetsEncryptForm
from manager.certificates.models import Certificate, DnsProvider

from .test_certificate_views import empty_broker, queued_tasks, user  # noqa: F401 (fixtures)

pytestmark = pytest.mark.django_db
TOKEN = "cf-Token_0123456789abcdefghijklmnopqrstuv"
SECRET = "c2VjcmV0LXRzaWcta2V5LWZvci1nYXRlaG91c2UtdGVzdHM="


def bind():
    return DnsProvider.objects.create(name="bind", kind="rfc2136", server="192.0.2.53", key_name="gatehouse",
                                      key_secret=SECRET)


def test_the_request_form_allows_wildcards_only_with_dns_01_and_a_provider():
    form = LetsEncryptForm({"name": "wild", "domains": "*.home.test", "challenge": "http"})
    assert not form.is_valid()
    assert "only be validated with DNS-01" in " ".join(form.errors["domains"])
    form = LetsEncryptForm({"name": "wild", "domains": "*.home.test", "challenge": "dns"})
    assert not form.is_valid() and "needs a DNS provider" in " ".join(form.errors["dns_provider"])
    provider = bind()
    form = LetsEncryptForm({"name": "wild", "domains": "*.home.test\nhome.test", "challenge": "dns",
                            "dns_provider": provider.pk})
    assert form.is_valid(), form.errors
    assert form.cleaned_data["domains"] == ["*.home.test", "home.test"]
    form = LetsEncryptForm({"name": "plain", "domains": "app.home.test", "dns_provider": provider.pk})
    assert form.is_valid() and form.cleaned_data["dns_provider"] is None, "HTTP-01 ignores the provider"


def test_requesting_a_wildcard_with_dns_01_queues_it(as_user, empty_broker):  # noqa: F811
    provider = bind()
    browser = as_user(user("admin", superuser=True))
    form = browser.get("/certificates/request/").content.decode()
    assert 'value="dns"' in form and "bind" in form
    response = browser.post("/certificates/request/", {"name": "wild", "domains": "*.home.test", "challenge": "dns",
                                                       "dns_provider": provider.pk})
    certificate = Certificate.objects.get(name="wild")
    assert response.status_code == 302
    assert (certificate.challenge, certificate.dns_provider, certificate.progress) == ("dns", provider, "queued")
    assert len(queued_tasks()) == 1


def test_provider_form_checks_the_fields_of_its_kind():
    form = DnsProviderForm({"name": "bind", "kind": "rfc2136", "server": "ns1.lan", "key_secret": "not base64!",
                            "propagation_seconds": 30})
    assert not form.is_valid()
    assert "not an IP address" in form.errors["server"][0]
    assert "base64" in form.errors["key_secret"][0] and "not base64!" not in str(form.errors)
    assert "required" in form.errors["key_name"][0]
    form = DnsProviderForm({"name": "cf", "kind": "cloudflare", "api_token": "", "propagation_seconds": 10})
    assert not form.is_valid() and "required" in form.errors["api_token"][0]


def test_dns_provider_pages_need_permissions_and_post(as_user):  # noqa: F811
    provider = bind()
    assert as_user(user("nobody")).get("/certificates/dns/").status_code == 403
    viewer = as_user(user("viewer", "view"))
    page = viewer.get("/certificates/dns/").content.decode()
    assert "bind" in page and "192.0.2.53" in page and SECRET not in page
    assert viewer.post(f"/certificates/dns/{provider.pk}/delete/").status_code == 403
    assert viewer.post("/certificates/dns/add/", {"name": "x"}).status_code == 403
    admin = as_user(user("admin", superuser=True))
    assert admin.get(f"/certificates/dns/{provider.pk}/delete/").status_code == 405
    assert DnsProvider.objects.filter(pk=provider.pk).exists()


def test_adding_a_provider_stores_the_secret_and_never_shows_it_again(as_user):  # noqa: F811
    admin = as_user(user("admin", superuser=True))
    response = admin.post("/certificates/dns/add/", {"name": "cf", "kind": "cloudflare", "api_token": TOKEN,
                                                     "propagation_seconds": 10}, follow=True)
    assert response.status_code == 200
    assert DnsProvider.objects.get(name="cf").api_token == TOKEN
    assert TOKEN not in response.content.decode()
    # A form error re-renders the page without the secret typed in.
    again = admin.post("/certificates/dns/add/", {"name": "cf", "kind": "cloudflare", "api_token": TOKEN,
                                                  "propagation_seconds": 10})
    assert "already exists" in again.content.decode() and TOKEN not in again.content.decode()


def test_a_provider_in_use_cannot_be_deleted(as_user):  # noqa: F811
    provider = bind()
    Certificate.objects.create(name="wild", domains=["*.home.test"], challenge="dns", dns_provider=provider)
    admin = as_user(user("admin", superuser=True))
    page = admin.post(f"/certificates/dns/{provider.pk}/delete/", follow=True).content.decode()
    assert "is used by wild" in page and DnsProvider.objects.filter(pk=provider.pk).exists()
    Certificate.objects.all().delete()
    admin.post(f"/certificates/dns/{provider.pk}/delete/")
    assert not DnsProvider.objects.exists()
