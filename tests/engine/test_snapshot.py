import dataclasses

import pytest

from proxy_engine.snapshot import SnapshotError, parse_snapshot
from tests.engine.support import document


def errors_of(doc):
    with pytest.raises(SnapshotError) as caught:
        parse_snapshot(doc)
    return caught.value.errors


def test_it_parses_the_documented_shape_into_frozen_objects():
    snap = parse_snapshot(document())
    host = snap.proxy_hosts[0]
    assert snap.revision == 1
    assert host.domains == ("app.example.test", "*.apps.example.test")
    assert host.upstreams[0].address == ("http", "10.0.1.10", 3000)
    assert [loc.path for loc in host.locations] == ["/static/", "/static/big/", "/inherit/"]
    assert host.timeouts.connect == 5.0
    assert str(snap.settings.trusted_proxies[0]) == "10.0.0.0/8"
    with pytest.raises(dataclasses.FrozenInstanceError):
        host.websockets = False


def test_it_accepts_the_full_example_from_the_docs():
    doc = document()
    doc["proxy_hosts"][0].update({
        "ssl": {"certificate": "home", "force_https": True, "http2": True, "hsts": True, "hsts_subdomains": False},
        "access_list": "family", "compression": ["gzip", "br", "zstd"],
        "cache": {"enabled": False, "default_ttl": 0.0},
        "rate_limit": {"requests": 100, "per": 60.0, "key": "ip", "burst": 20},
        "headers": {"request": {"set": {"X-Env": "home"}, "remove": ["X-Debug"]},
                    "response": {"set": {}, "remove": ["Server"]}},
        "block_exploits": False,
    })
    host = parse_snapshot(doc).proxy_hosts[0]
    assert host.request_headers.set == (("X-Env", "home"),)
    assert host.response_headers.remove == ("server",)


def test_it_names_every_error_in_one_refusal():
    doc = document(revision="twelve")
    doc["proxy_hosts"][0]["upstreams"][0]["port"] = 70000
    doc["proxy_hosts"][0]["domains"].append("Bad_Name.test")
    doc["settings"]["trusted_proxies"] = ["not-a-cidr"]
    errors = errors_of(doc)
    assert any(e.startswith("revision:") for e in errors)
    assert "proxy_hosts[0].upstreams[0].port: 70000 out of range 1-65535" in errors
    assert any(e.startswith("proxy_hosts[0].domains[2]:") for e in errors)
    assert any(e.startswith("settings.trusted_proxies[0]:") for e in errors)


@pytest.mark.parametrize("mutate, path", [
    (lambda d: d.pop("revision"), "revision"),
    (lambda d: d["proxy_hosts"][0].update(upstreams=[]), "proxy_hosts[0].upstreams"),
    (lambda d: d["proxy_hosts"][0].update(max_body_size="big"), "proxy_hosts[0].max_body_size"),
    (lambda d: d["proxy_hosts"][0]["timeouts"].update(connect=-1), "proxy_hosts[0].timeouts.connect"),
    (lambda d: d["proxy_hosts"][0]["locations"][0].update(path="static"), "proxy_hosts[0].locations[0].path"),
    (lambda d: d["proxy_hosts"][0]["load_balancing"].update(policy="fastest"), "proxy_hosts[0].load_balancing.policy"),
    (lambda d: d["redirection_hosts"][0].update(code=303), "redirection_hosts[0].code"),
    (lambda d: d["redirection_hosts"][0].update(to="ftp://x"), "redirection_hosts[0].to"),
    (lambda d: d["dead_hosts"][0].update(domains=["app.example.test"]), "dead_hosts[0].domains[0]"),
    (lambda d: d["settings"].update(default_site={"action": "teapot"}), "settings.default_site.action"),
    (lambda d: d["settings"].update(default_site={"action": "redirect"}), "settings.default_site.to"),
    (lambda d: d["proxy_hosts"][0].update(headers={"request": {"set": {"X-A": "a\r\nb"}}}),
     "proxy_hosts[0].headers.request.set.X-A"),
    (lambda d: d["proxy_hosts"].append("not a host"), "proxy_hosts[1]"),
])
def test_it_refuses_each_class_of_bad_document_and_names_the_path(mutate, path):
    doc = document()
    mutate(doc)
    errors = errors_of(doc)
    assert any(e.startswith(path + ":") for e in errors), errors


def test_a_domain_claimed_twice_names_the_first_owner():
    doc = document()
    doc["redirection_hosts"][0]["domains"] = ["app.example.test"]
    assert errors_of(doc) == ("redirection_hosts[0].domains[0]: app.example.test is already claimed by proxy host 1",)


def test_errors_never_quote_secret_values():
    from proxy_engine.snapshot import _Reader

    reader = _Reader()
    reader.get({"key_pem": 12345}, "key_pem", "certificates[0]", str)
    assert reader.errors == ["certificates[0].key_pem: must be a string, got a secret value"]


def test_unknown_keys_are_ignored_so_the_manager_can_add_keys_first():
    doc = document(future_feature={"x": 1})
    doc["proxy_hosts"][0]["name"] = "my app"
    assert parse_snapshot(doc).revision == 1
