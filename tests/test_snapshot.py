import json

import pytest

from manager.access.models import AccessList, AccessListUser, AccessRule
from manager.certificates.models import Certificate
from manager.hosts.models import DeadHost, Location, ProxyHost, RedirectionHost, Settings, Stream
from manager.hosts.snapshot import build_snapshot

pytestmark = pytest.mark.django_db
UPSTREAM = {"scheme": "http", "host": "10.0.1.10", "port": 3000, "weight": 1}


def test_snapshot_holds_enabled_hosts_only_in_engine_form():
    family = AccessList.objects.create(name="family", satisfy="all")
    AccessListUser.objects.create(access_list=family, username="alice", password_hash="pbkdf2_sha256$1$x$y")
    AccessRule.objects.create(access_list=family, position=0, action="allow", source="192.168.1.0/24")
    cert = Certificate.objects.create(name="home", provider="custom", domains=["app.example.test"],
                                      certificate_pem="CERT", key_pem="KEY", status="valid")
    Certificate.objects.create(name="pending", domains=["x.example.test"])
    host = ProxyHost.objects.create(domains=["app.example.test"], upstreams=[UPSTREAM], certificate=cert,
                                    access_list=family, force_https=True, connect_timeout=2.5, max_body_size=1024)
    Location.objects.create(proxy_host=host, path="/static/", upstreams=[UPSTREAM], cache={"enabled": True, "default_ttl": 86400.0})
    ProxyHost.objects.create(domains=["off.example.test"], upstreams=[UPSTREAM], enabled=False)
    RedirectionHost.objects.create(domains=["old.example.test"], to="https://new.example.test", code=308)
    DeadHost.objects.create(domains=["gone.example.test"])
    Stream.objects.create(listen=2222, protocol="tcp", upstream_host="10.0.0.5", upstream_port=22)
    settings_row = Settings.load()
    settings_row.default_site_action = "redirect"
    settings_row.default_site_to = "https://example.test"
    settings_row.save()

    doc = build_snapshot()

    json.dumps(doc)  # plain data only
    assert doc["settings"]["default_site"] == {"action": "redirect", "to": "https://example.test"}
    assert [h["domains"] for h in doc["proxy_hosts"]] == [["app.example.test"]]
    served = doc["proxy_hosts"][0]
    assert served["ssl"]["certificate"] == "home" and served["ssl"]["force_https"] is True
    assert served["access_list"] == "family"
    assert served["timeouts"] == {"connect": 2.5, "response": 60.0}
    assert served["max_body_size"] == 1024
    assert served["locations"][0]["path"] == "/static/"
    assert served["locations"][0]["cache"] == {"enabled": True, "default_ttl": 86400.0, "stale_if_error": 0.0}
    assert served["headers"] == {"request": {"set": {}, "remove": []}, "response": {"set": {}, "remove": []}}
    assert doc["redirection_hosts"][0]["code"] == 308
    assert doc["dead_hosts"][0]["domains"] == ["gone.example.test"]
    assert doc["streams"][0]["upstream_port"] == 22
    assert doc["access_lists"][0]["users"] == [{"username": "alice", "password_hash": "pbkdf2_sha256$1$x$y"}]
    assert [c["name"] for c in doc["certificates"]] == ["home"]


def test_snapshot_revision_follows_changes():
    first = build_snapshot()["revision"]
    DeadHost.objects.create(domains=["gone.example.test"])
    assert build_snapshot()["revision"] == first + 1


def test_building_a_snapshot_never_writes_even_without_a_settings_row():
    from manager.hosts.revision import current_revision

    Settings.objects.all().delete()
    before = current_revision()
    doc = build_snapshot()
    assert doc["settings"]["default_site"] == {"action": "welcome"}
    assert current_revision() == before and not Settings.objects.exists()
