import pytest
from django.core.exceptions import ValidationError

from manager.hosts.models import DeadHost, ProxyHost, RedirectionHost, Stream

UPSTREAM = [{"scheme": "http", "host": "127.0.0.1", "port": 9000, "weight": 1}]
pytestmark = pytest.mark.django_db


def make_proxy(*domains, enabled=True):
    host = ProxyHost(domains=list(domains), upstreams=UPSTREAM, enabled=enabled)
    host.full_clean()
    host.save()
    return host


def test_domains_are_canonicalised_on_clean():
    host = make_proxy("App.Example.Test.", "*.Apps.Example.test")
    assert host.domains == ["app.example.test", "*.apps.example.test"]


def test_a_domain_claimed_by_another_kind_of_host_names_that_host():
    owner = make_proxy("app.example.test")
    dead = DeadHost(domains=["APP.example.test"])
    with pytest.raises(ValidationError) as caught:
        dead.full_clean()
    assert caught.value.message_dict["domains"] == [f"app.example.test is already used by proxy host 'app.example.test' (#{owner.pk})"]


def test_a_disabled_host_does_not_claim_its_domains():
    make_proxy("app.example.test", enabled=False)
    redirect = RedirectionHost(domains=["app.example.test"], to="https://new.example.test")
    redirect.full_clean()


def test_a_host_may_keep_its_own_domains_on_edit():
    host = make_proxy("app.example.test")
    host.domains = ["app.example.test", "www.example.test"]
    host.full_clean()


def test_wildcard_and_exact_name_are_different_claims():
    make_proxy("*.example.test")
    make_proxy("app.example.test")


def test_duplicate_domain_in_one_host_is_refused():
    with pytest.raises(ValidationError, match="listed twice"):
        ProxyHost(domains=["a.example.test", "A.example.test"], upstreams=UPSTREAM).full_clean()


def test_proxy_host_needs_an_upstream_and_a_domain():
    with pytest.raises(ValidationError) as caught:
        ProxyHost(domains=[], upstreams=[]).full_clean()
    assert "domains" in caught.value.message_dict


def test_redirection_target_must_be_absolute():
    with pytest.raises(ValidationError) as caught:
        RedirectionHost(domains=["old.example.test"], to="new.example.test").full_clean()
    assert "to" in caught.value.message_dict


def test_two_enabled_streams_cannot_share_a_port():
    first = Stream(listen=2222, protocol="tcp", upstream_host="10.0.0.5", upstream_port=22)
    first.full_clean()
    first.save()
    clash = Stream(listen=2222, protocol="tcp", upstream_host="10.0.0.6", upstream_port=22)
    with pytest.raises(ValidationError, match=f"tcp port 2222 is already used by stream #{first.pk}"):
        clash.full_clean()
    Stream(listen=2222, protocol="udp", upstream_host="10.0.0.6", upstream_port=53).full_clean()


def test_stream_port_range_is_checked():
    with pytest.raises(ValidationError, match="port 70000 out of range"):
        Stream(listen=70000, protocol="tcp", upstream_host="10.0.0.5", upstream_port=22).full_clean()
