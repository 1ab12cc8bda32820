"""schema.parse_document: every key of the contract, canonical values, every error with its path."""
import pytest
import yaml

from manager.configuration.schema import DocumentInvalid, load_yaml, parse_document

from .conftest import CONTRACT_EXAMPLE


def parse(data):
    doc, errors = parse_document(data)
    assert errors == [], [str(e) for e in errors]
    return doc


def error_lines(data):
    _, errors = parse_document(data)
    return [str(error) for error in errors]


def test_it_reads_every_key_of_the_contract_example_into_canonical_values():
    doc = parse(load_yaml(CONTRACT_EXAMPLE))

    assert doc["settings"] == {
        "default_site_action": "404", "default_site_to": "", "default_site_body": "",
        "acme_email": "me@example.test", "acme_directory": "https://acme-v02.api.letsencrypt.org/directory",
        "acme_ca_bundle": "", "tls_fallback": "self_signed", "trusted_proxies": ["10.0.0.0/8"],
        "cache_memory_bytes": 64 * 1024 * 1024, "cache_disk_bytes": 0,
    }
    (family,) = doc["access_lists"]
    assert (family["name"], family["satisfy"], family["pass_auth"]) == ("family", "any", False)
    assert family["users"] == [{"username": "alice", "password": "s3cret"}]
    assert family["rules"] == [{"action": "allow", "source": "192.168.1.0/24"}, {"action": "deny", "source": "all"}]
    (home,) = doc["certificates"]
    assert (home["name"], home["provider"], home["domains"]) == ("home", "letsencrypt", ["app.example.test"])
    assert home["certificate_pem"] is None and home["key_pem"] is None

    (host,) = doc["proxy_hosts"]
    assert host["domains"] == ["app.example.test"] and host["enabled"] is True
    assert host["upstreams"] == [{"scheme": "http", "host": "10.0.1.10", "port": 3000, "weight": 1},
                                 {"scheme": "http", "host": "10.0.1.11", "port": 3000, "weight": 2}]
    assert host["lb_policy"] == "least_conn"
    assert host["health_check"] == {"path": "/health", "interval": 10.0, "timeout": 2.0, "expect": [200, 399],
                                    "healthy": 2, "unhealthy": 3}
    assert host["passive_health"] is None and host["lb_sticky"] is None
    assert host["websockets"] is True
    assert (host["connect_timeout"], host["response_timeout"]) == (5.0, 60.0)
    assert host["max_body_size"] == 100 * 1024 * 1024
    assert host["certificate"] == "home"
    assert (host["force_https"], host["http2"], host["hsts"], host["hsts_subdomains"]) == (True, True, True, False)
    assert host["access_list"] == "family"
    assert host["compression"] == ["gzip", "br", "zstd"]
    assert host["cache"] == {"enabled": True, "default_ttl": 300.0, "stale_if_error": 0.0}
    assert (host["security_headers"], host["hide_upstream_identity"], host["cors"], host["forward_auth"]) == (
        False, False, None, None)
    assert host["rate_limit"] == {"requests": 100, "per": 60.0, "key": "ip", "burst": 20}
    assert host["headers"] == {"request": {"set": {"X-Env": "home"}, "remove": ["X-Debug"]},
                               "response": {"set": {"X-Frame-Options": "DENY"}, "remove": ["Server", "X-Powered-By"]}}
    assert host["block_exploits"] is True
    assert host["locations"] == [{"position": 0, "path": "/static/",
                                  "upstreams": [{"scheme": "http", "host": "10.0.1.10", "port": 3000, "weight": 1}],
                                  "cache": {"enabled": True, "default_ttl": 86400.0, "stale_if_error": 0.0},
                                  "headers": None, "compression": None, "rate_limit": None}]

    (redirect,) = doc["redirection_hosts"]
    assert (redirect["domains"], redirect["to"], redirect["code"], redirect["preserve_path"]) == (
        ["old.example.test"], "https://new.example.test", 301, True)
    assert [h["domains"] for h in doc["dead_hosts"]] == [["gone.example.test"]]
    (stream,) = doc["streams"]
    assert (stream["listen"], stream["protocol"], stream["upstream_host"], stream["upstream_port"]) == (2222, "tcp", "10.0.0.5", 22)


def test_it_canonicalises_names_addresses_and_units(contract):
    host = contract["proxy_hosts"][0]
    host["domains"] = ["App.Example.TEST.", "bücher.example.test", "*.Apps.example.test"]
    host["upstreams"] = ["HTTPS://Backend.LAN", "http://[2001:DB8::1]:8080/"]
    host["timeouts"] = {"connect": "250ms", "response": 90}
    host["max_body_size"] = "512k"
    contract["settings"]["trusted_proxies"] = ["10.1.2.3/8", "2001:DB8::/32", "192.168.1.7"]

    doc = parse(contract)

    host = doc["proxy_hosts"][0]
    assert host["domains"] == ["app.example.test", "xn--bcher-kva.example.test", "*.apps.example.test"]
    assert host["upstreams"] == [{"scheme": "https", "host": "backend.lan", "port": 443, "weight": 1},
                                 {"scheme": "http", "host": "2001:db8::1", "port": 8080, "weight": 1}]
    assert (host["connect_timeout"], host["response_timeout"], host["max_body_size"]) == (0.25, 90.0, 512 * 1024)
    assert doc["settings"]["trusted_proxies"] == ["10.0.0.0/8", "2001:db8::/32", "192.168.1.7/32"]


def test_it_fills_defaults_for_keys_left_out():
    doc = parse({"version": 1, "proxy_hosts": [{"domains": ["a.example.test"], "upstreams": ["http://a:80"]}],
                 "streams": [{"listen": 53, "upstream": "dns.lan:53"}]})

    host = doc["proxy_hosts"][0]
    assert (host["enabled"], host["lb_policy"], host["websockets"], host["compression"]) == (True, "round_robin", False, [])
    assert (host["connect_timeout"], host["response_timeout"], host["max_body_size"]) == (5.0, 60.0, None)
    assert (host["certificate"], host["access_list"], host["cache"], host["headers"]) == (None, None, None, None)
    assert doc["streams"][0]["protocol"] == "tcp"
    assert doc["settings"] is None


@pytest.mark.parametrize("change, expected", [
    (lambda d: d["proxy_hosts"][0].update(domains=["bad_host.example.test"]),
     "proxy_hosts[0].domains[0]: invalid domain name 'bad_host.example.test'"),
    (lambda d: d["proxy_hosts"][0].update(domains=["app.*.example.test"]),
     "proxy_hosts[0].domains[0]: invalid domain name 'app.*.example.test': a wildcard may only be the whole first label"),
    (lambda d: d["proxy_hosts"][0]["upstreams"].__setitem__(0, "http://10.0.1.10:70000"),
     "proxy_hosts[0].upstreams[0]: port 70000 out of range (1-65535)"),
    (lambda d: d["proxy_hosts"][0]["upstreams"].__setitem__(1, {"url": "ftp://files.lan:21", "weight": 2}),
     "proxy_hosts[0].upstreams[1].url: upstream URL 'ftp://files.lan:21': scheme must be http or https"),
    (lambda d: d["proxy_hosts"][0]["upstreams"].__setitem__(0, "http://10.0.1.10:3000/app"),
     "proxy_hosts[0].upstreams[0]: upstream URL 'http://10.0.1.10:3000/app': no path, query or fragment allowed"),
    (lambda d: d["streams"][0].update(listen=70000), "streams[0].listen: port 70000 out of range (1-65535)"),
    (lambda d: d["settings"].update(trusted_proxies=["10.0.0.300/8"]),
     "settings.trusted_proxies[0]: invalid IP address or CIDR '10.0.0.300/8'"),
    (lambda d: d["access_lists"][0]["rules"].__setitem__(0, {"allow": "192.168.1.0/33"}),
     "access_lists[0].rules[0].allow: invalid IP address or CIDR '192.168.1.0/33'"),
    (lambda d: d["proxy_hosts"][0]["headers"]["request"]["set"].update({"X-Env": "home\r\nX-Evil: 1"}),
     "proxy_hosts[0].headers.request.set.X-Env: invalid header value 'home\\r\\nX-Evil: 1': control character '\\r'"),
    (lambda d: d["proxy_hosts"][0]["headers"]["response"]["set"].update({"Bad Name": "x"}),
     "proxy_hosts[0].headers.response.set.Bad Name: invalid header name 'Bad Name': character ' ' not allowed"),
    (lambda d: d["proxy_hosts"][0]["headers"]["request"].update(add={"Transfer-Encoding": "chunked"}),
     "proxy_hosts[0].headers.request.add.Transfer-Encoding: Transfer-Encoding is managed by the proxy"),
    (lambda d: d["proxy_hosts"][0]["headers"]["response"]["remove"].append("Content-Length"),
     "proxy_hosts[0].headers.response.remove[2]: Content-Length is managed by the proxy"),
    (lambda d: d["proxy_hosts"][0]["cache"].update(default_ttl="5 minutes"),
     "proxy_hosts[0].cache.default_ttl: invalid duration '5 minutes'"),
    (lambda d: d["proxy_hosts"][0].update(max_body_size="100x"), "proxy_hosts[0].max_body_size: invalid size '100x'"),
    (lambda d: d["proxy_hosts"][0].update(websocket=True), "proxy_hosts[0].websocket: unknown key (expected one of: domains,"),
    (lambda d: d["proxy_hosts"][0].update(websockets="yes"),
     "proxy_hosts[0].websockets: expected true or false, got string 'yes'"),
    (lambda d: d["proxy_hosts"][0].update(upstreams="http://10.0.1.10:3000"),
     "proxy_hosts[0].upstreams: expected a list, got string 'http://10.0.1.10:3000'"),
    (lambda d: d["proxy_hosts"][0].update(ssl=True), "proxy_hosts[0].ssl: expected a mapping, got boolean true"),
    (lambda d: d["proxy_hosts"][0]["load_balancing"].update(policy="fastest"),
     "proxy_hosts[0].load_balancing.policy: expected one of round_robin, least_conn, ip_hash, random, first, got string 'fastest'"),
    (lambda d: d["proxy_hosts"][0]["rate_limit"].update(key="cookie"),
     "proxy_hosts[0].rate_limit.key: expected ip or header:<Header-Name>, got string 'cookie'"),
    (lambda d: d["dead_hosts"][0].update(domains=["app.example.test"]),
     "dead_hosts[0].domains[0]: app.example.test is already used by proxy_hosts[0]"),
    (lambda d: d["proxy_hosts"][0].update(domains=["app.example.test", "APP.example.test"]),
     "proxy_hosts[0].domains[1]: app.example.test is listed twice"),
    (lambda d: d["access_lists"].append({"name": "family"}),
     "access_lists[1].name: access list 'family' is already defined at access_lists[0]"),
    (lambda d: d["streams"].append({"listen": 2222, "upstream": "10.0.0.6:22"}),
     "streams[1].listen: tcp port 2222 is already used by streams[0]"),
    (lambda d: d["access_lists"][0]["users"].__setitem__(0, {"username": "alice", "password_hash": "s3cret"}),
     "access_lists[0].users[0].password_hash: not a Django password hash"),
    (lambda d: d["proxy_hosts"][0].pop("upstreams"), "proxy_hosts[0].upstreams: required key is missing"),
    (lambda d: d.update(version=2), "version: unsupported version 2 (this Gatehouse reads version 1)"),
    (lambda d: d["settings"]["default_site"].update(action="redirect"),
     "settings.default_site.to: required when action is redirect"),
])
def test_it_names_each_invalid_value_with_its_path(contract, change, expected):
    change(contract)

    lines = error_lines(contract)

    assert any(line.startswith(expected) for line in lines), lines


def test_it_reports_every_error_not_just_the_first(contract):
    contract["proxy_hosts"][0]["upstreams"][0] = "http://10.0.1.10:70000"
    contract["proxy_hosts"][0]["max_body_size"] = "lots"
    contract["streams"][0]["protocol"] = "sctp"
    contract["surprise"] = 1

    lines = error_lines(contract)

    assert len(lines) == 4, lines
    assert "surprise: unknown key (expected one of: version, settings, access_lists, dns_providers, certificates, proxy_hosts, " \
           "redirection_hosts, dead_hosts, streams)" in lines


def test_it_rejects_a_pem_that_does_not_parse_and_a_key_that_does_not_match(contract, tls):
    contract["certificates"] += [
        {"name": "broken", "provider": "custom", "certificate_pem": "-----BEGIN CERTIFICATE-----\nbm9wZQ==\n-----END CERTIFICATE-----\n",
         "key_pem": tls.key},
        {"name": "mismatched", "provider": "custom", "certificate_pem": tls.cert, "key_pem": tls.other_key},
        {"name": "no-pem", "provider": "custom", "domains": ["x.example.test"]},
    ]

    lines = error_lines(contract)

    assert any(line.startswith("certificates[1].certificate_pem: certificate PEM does not parse") for line in lines), lines
    assert "certificates[2].key_pem: the private key does not match the certificate" in lines
    assert "certificates[3].certificate_pem: required for a custom certificate" in lines


def test_a_custom_certificate_without_domains_takes_the_names_it_covers(contract, tls):
    contract["certificates"].append({"name": "lab", "provider": "custom", "certificate_pem": tls.cert, "key_pem": tls.key})

    doc = parse(contract)

    assert doc["certificates"][1]["domains"] == ["*.secure.example.test", "secure.example.test"]


def test_a_custom_certificate_must_cover_the_domains_it_claims(contract, tls):
    contract["certificates"].append({"name": "lab", "provider": "custom", "certificate_pem": tls.cert, "key_pem": tls.key,
                                     "domains": ["secure.example.test", "a.secure.example.test", "b.a.secure.example.test"]})

    lines = error_lines(contract)

    assert lines == ["certificates[1].domains: b.a.secure.example.test is not covered by the certificate "
                     "(it covers secure.example.test, *.secure.example.test)"], lines


def test_https_upstream_options_and_tls_settings(contract, tls):
    contract["settings"]["acme"]["ca_bundle"] = "/etc/gatehouse/pebble.pem"
    contract["settings"]["tls"] = {"fallback": "reject"}
    contract["proxy_hosts"][0]["upstreams"] = [
        {"url": "https://192.168.1.2:8006", "verify": False},
        {"url": "https://nas.lan", "ca_pem": tls.chain, "weight": 3},
    ]

    doc = parse(contract)

    assert (doc["settings"]["acme_ca_bundle"], doc["settings"]["tls_fallback"]) == ("/etc/gatehouse/pebble.pem", "reject")
    assert doc["proxy_hosts"][0]["upstreams"] == [
        {"scheme": "https", "host": "192.168.1.2", "port": 8006, "weight": 1, "verify": False},
        {"scheme": "https", "host": "nas.lan", "port": 443, "weight": 3, "ca_pem": tls.chain.strip() + "\n"},
    ]


def test_https_upstream_options_are_checked(contract):
    contract["settings"]["acme"]["ca_bundle"] = "relative/ca.pem"
    contract["settings"]["tls"] = {"fallback": "maybe"}
    contract["proxy_hosts"][0]["upstreams"] = [
        {"url": "http://10.0.1.10:3000", "verify": False},
        {"url": "https://nas.lan", "ca_pem": "not a pem"},
        {"url": "https://nas.lan:8443", "verify": "no"},
    ]

    lines = error_lines(contract)

    assert "settings.acme.ca_bundle: expected an absolute file path, got string 'relative/ca.pem'" in lines
    assert any(line.startswith("settings.tls.fallback: ") and "maybe" in line for line in lines), lines
    assert "proxy_hosts[0].upstreams[0].verify: only for https upstreams" in lines
    assert any(line.startswith("proxy_hosts[0].upstreams[1].ca_pem: not a PEM certificate") for line in lines), lines
    assert "proxy_hosts[0].upstreams[2].verify: expected true or false, got string 'no'" in lines


def test_a_yaml_syntax_error_names_its_line():
    with pytest.raises(DocumentInvalid) as caught:
        load_yaml("version: 1\nproxy_hosts:\n  - domains: [a.example.test\n    upstreams: []\n")

    (error,) = caught.value.errors
    assert error.path.startswith("line 4"), str(error)
    assert "YAML syntax error" in error.message


def test_a_key_written_twice_is_an_error():
    with pytest.raises(DocumentInvalid) as caught:
        load_yaml("version: 1\nstreams:\n  - {listen: 22, listen: 23, upstream: 'a:22'}\n")

    assert str(caught.value.errors[0]) == "line 3, column 18: YAML syntax error: duplicate key 'listen'"


def test_a_document_that_is_not_a_mapping_is_one_clear_error():
    assert error_lines(yaml.safe_load("- 1\n- 2\n")) == [
        "the document must be a mapping with version: 1 and the sections settings, access_lists, dns_providers, "
        "certificates, proxy_hosts, redirection_hosts, dead_hosts, streams; got a list"]
