"""schema.parse_document for the traffic-feature keys (issue #6): canonical values, defaults
that keep older documents unchanged, and every error named with its path."""
import pytest

from manager.configuration.schema import parse_document


def host_doc(**keys):
    host = {"domains": ["media.home.test"], "upstreams": ["http://10.0.1.20:8096", "http://10.0.1.21:8096"], **keys}
    return {"version": 1, "proxy_hosts": [host]}


def parse_host(**keys):
    doc, errors = parse_document(host_doc(**keys))
    assert errors == [], [str(e) for e in errors]
    return doc["proxy_hosts"][0]


def error_lines(document):
    _, errors = parse_document(document)
    return [str(error) for error in errors]


def test_a_host_without_the_new_keys_gets_their_defaults():
    host = parse_host()
    assert (host["health_check"], host["passive_health"], host["lb_sticky"]) == (None, None, None)
    assert (host["security_headers"], host["hide_upstream_identity"]) == (False, False)
    assert (host["cors"], host["forward_auth"], host["cache"]) == (None, None, None)


def test_load_balancing_with_every_key_is_canonical():
    host = parse_host(load_balancing={
        "policy": "ip_hash",
        "sticky": {"cookie": "jf_route", "max_age": "1d"},
        "health_check": {"path": "/health", "interval": "30s", "timeout": "5s", "expect": "200-299",
                         "healthy": 1, "unhealthy": 5},
        "passive": {"failures": 5, "window": "1m", "cooldown": "2m"}})
    assert host["lb_policy"] == "ip_hash"
    assert host["lb_sticky"] == {"cookie": "jf_route", "max_age": 86400.0}
    assert host["health_check"] == {"path": "/health", "interval": 30.0, "timeout": 5.0, "expect": [200, 299],
                                    "healthy": 1, "unhealthy": 5}
    assert host["passive_health"] == {"failures": 5, "window": 60.0, "cooldown": 120.0}


def test_empty_feature_mappings_take_every_default():
    host = parse_host(load_balancing={"sticky": {}, "health_check": {}, "passive": {}})
    assert host["lb_sticky"] == {"cookie": "gh_sticky", "max_age": 0.0}
    assert host["health_check"] == {"path": "/", "interval": 10.0, "timeout": 2.0, "expect": [200, 399],
                                    "healthy": 2, "unhealthy": 3}
    assert host["passive_health"] == {"failures": 3, "window": 10.0, "cooldown": 30.0}


@pytest.mark.parametrize("written, stored", [(204, [204, 204]), ("200", [200, 200]), ("200-399", [200, 399]),
                                             (" 301 - 302 ", [301, 302])])
def test_expect_is_one_status_or_an_inclusive_range(written, stored):
    assert parse_host(load_balancing={"health_check": {"expect": written}})["health_check"]["expect"] == stored


def test_a_short_interval_shortens_the_default_timeout():
    check = parse_host(load_balancing={"health_check": {"interval": "500ms"}})["health_check"]
    assert (check["interval"], check["timeout"]) == (0.5, 0.5)


def test_cache_stale_if_error_security_cors_and_forward_auth():
    host = parse_host(
        cache={"enabled": True, "default_ttl": "5m", "stale_if_error": "1h"},
        security_headers=True, hide_upstream_identity=True,
        cors={"origins": ["HTTPS://App.Home.Test:443", "http://localhost:5173"], "methods": ["get", "POST", "delete"],
              "headers": ["Content-Type", "Authorization"], "expose": ["X-Total-Count"], "credentials": True,
              "max_age": "1h"},
        forward_auth={"url": "http://127.0.0.1:9091/api/verify?rd=https://auth.home.test",
                      "response_headers": ["Remote-User", "Remote-Groups"], "timeout": "3s"})
    assert host["cache"] == {"enabled": True, "default_ttl": 300.0, "stale_if_error": 3600.0}
    assert host["security_headers"] is True and host["hide_upstream_identity"] is True
    assert host["cors"] == {"origins": ["https://app.home.test", "http://localhost:5173"],
                            "methods": ["GET", "POST", "DELETE"], "headers": ["Content-Type", "Authorization"],
                            "expose": ["X-Total-Count"], "credentials": True, "max_age": 3600.0}
    assert host["forward_auth"] == {"url": "http://127.0.0.1:9091/api/verify?rd=https://auth.home.test",
                                    "response_headers": ["Remote-User", "Remote-Groups"], "timeout": 3.0}


def test_cors_and_forward_auth_defaults():
    host = parse_host(cors={"origins": ["*"]}, forward_auth={"url": "https://auth.home.test/api/verify"})
    assert host["cors"] == {"origins": ["*"], "methods": ["GET", "HEAD", "POST"], "headers": [], "expose": [],
                            "credentials": False, "max_age": 600.0}
    assert host["forward_auth"] == {"url": "https://auth.home.test/api/verify", "response_headers": [], "timeout": 5.0}
    assert parse_host(forward_auth={"url": "HTTP://auth.lan:9091/Verify"})["forward_auth"]["url"] == "http://auth.lan:9091/Verify"


def test_wildcard_methods_and_headers_are_fine_with_credentials():
    cors = parse_host(cors={"origins": ["https://a.home.test"], "credentials": True, "methods": ["*"],
                            "headers": ["*"]})["cors"]
    assert (cors["methods"], cors["headers"], cors["credentials"]) == (["*"], ["*"], True)


def test_a_location_cache_gains_stale_if_error():
    host = parse_host(locations=[{"path": "/img/", "cache": {"default_ttl": "1d", "stale_if_error": "10m"}}])
    assert host["locations"][0]["cache"] == {"enabled": True, "default_ttl": 86400.0, "stale_if_error": 600.0}


def test_settings_cache_sizes():
    doc, errors = parse_document({"version": 1, "settings": {"cache": {"memory_bytes": "256MiB", "disk_bytes": "10g"}}})
    assert errors == []
    assert (doc["settings"]["cache_memory_bytes"], doc["settings"]["cache_disk_bytes"]) == (256 * 1024**2, 10 * 1024**3)
    doc, errors = parse_document({"version": 1, "settings": {"default_site": {"action": 404}}})
    assert (doc["settings"]["cache_memory_bytes"], doc["settings"]["cache_disk_bytes"]) == (64 * 1024**2, 0)


P = "proxy_hosts[0]"


@pytest.mark.parametrize("keys, expected", [
    ({"load_balancing": {"sticky": {"cookie": "my cookie"}}},
     f"{P}.load_balancing.sticky.cookie: invalid cookie name 'my cookie': character ' ' not allowed (RFC 6265 token)"),
    ({"load_balancing": {"sticky": {"cookie": "a=b"}}}, f"{P}.load_balancing.sticky.cookie: invalid cookie name 'a=b'"),
    ({"load_balancing": {"sticky": {"cookie": "x" * 65}}}, f"{P}.load_balancing.sticky.cookie: cookie name longer than 64"),
    ({"load_balancing": {"sticky": {"max_age": "forever"}}}, f"{P}.load_balancing.sticky.max_age: invalid duration 'forever'"),
    ({"load_balancing": {"sticky": {"path": "/"}}}, f"{P}.load_balancing.sticky.path: unknown key (expected one of: cookie, max_age)"),
    ({"load_balancing": {"sticky": True}}, f"{P}.load_balancing.sticky: expected a mapping, got boolean true"),
    ({"load_balancing": {"health_check": {"timeout": 0}}}, f"{P}.load_balancing.health_check.timeout: duration 0 must be more than zero"),
    ({"load_balancing": {"health_check": {"interval": "5s", "timeout": "10s"}}},
     f"{P}.load_balancing.health_check.timeout: timeout 10s is longer than the interval 5s"),
    ({"load_balancing": {"health_check": {"expect": "399-200"}}},
     f"{P}.load_balancing.health_check.expect: range '399-200' runs backwards (399 > 200)"),
    ({"load_balancing": {"health_check": {"expect": 700}}}, f"{P}.load_balancing.health_check.expect: status 700 out of range (100-599)"),
    ({"load_balancing": {"health_check": {"expect": "99-200"}}}, f"{P}.load_balancing.health_check.expect: status 99 out of range"),
    ({"load_balancing": {"health_check": {"expect": "2xx"}}},
     f"{P}.load_balancing.health_check.expect: expected a status like 200 or a range like \"200-399\", got string '2xx'"),
    ({"load_balancing": {"health_check": {"expect": True}}}, f"{P}.load_balancing.health_check.expect: expected a status"),
    ({"load_balancing": {"health_check": {"healthy": 0}}}, f"{P}.load_balancing.health_check.healthy: healthy 0 out of range (1-100)"),
    ({"load_balancing": {"health_check": {"unhealthy": "3"}}},
     f"{P}.load_balancing.health_check.unhealthy: unhealthy must be a whole number, got '3'"),
    ({"load_balancing": {"health_check": {"method": "HEAD"}}}, f"{P}.load_balancing.health_check.method: unknown key"),
    ({"load_balancing": {"passive": {"failures": 0}}}, f"{P}.load_balancing.passive.failures: failures 0 out of range (1-100)"),
    ({"load_balancing": {"passive": {"window": "0s"}}}, f"{P}.load_balancing.passive.window: duration '0s' must be more than zero"),
    ({"load_balancing": {"passive": {"cooldown": -1}}}, f"{P}.load_balancing.passive.cooldown: invalid duration -1: negative"),
    ({"cache": {"stale_if_error": "a while"}}, f"{P}.cache.stale_if_error: invalid duration 'a while'"),
    ({"security_headers": "yes"}, f"{P}.security_headers: expected true or false, got string 'yes'"),
    ({"hide_upstream_identity": 1}, f"{P}.hide_upstream_identity: expected true or false, got number 1"),
    ({"cors": {"methods": ["GET"]}}, f"{P}.cors.origins: required key is missing"),
    ({"cors": {"origins": []}}, f"{P}.cors.origins: at least one origin is required"),
    ({"cors": {"origins": ["https://app.home.test/"]}},
     f"{P}.cors.origins[0]: origin 'https://app.home.test/' must look like https://app.example.com[:port] (no path"),
    ({"cors": {"origins": ["app.home.test"]}}, f"{P}.cors.origins[0]: origin 'app.home.test' must look like"),
    ({"cors": {"origins": ["https://*.home.test"]}}, f"{P}.cors.origins[0]: origin 'https://*.home.test': no wildcards in an origin"),
    ({"cors": {"origins": ["https://a.home.test:99999"]}}, f"{P}.cors.origins[0]: port 99999 out of range"),
    ({"cors": {"origins": ["https://bad_name.home.test"]}},
     f"{P}.cors.origins[0]: origin 'https://bad_name.home.test': invalid domain name"),
    ({"cors": {"origins": ["https://a.home.test", "https://A.home.test:443"]}},
     f"{P}.cors.origins[1]: https://a.home.test is listed twice"),
    ({"cors": {"origins": ["*", "https://a.home.test"]}}, f"{P}.cors.origins: \"*\" allows every origin: list it alone"),
    ({"cors": {"origins": ["*"], "credentials": True}},
     f"{P}.cors.credentials: not allowed with origins [\"*\"]: every web site could read responses"),
    ({"cors": {"origins": ["https://a.home.test"], "credentials": True, "expose": ["*"]}},
     f"{P}.cors.expose: \"*\" is not a wildcard for requests with credentials"),
    ({"cors": {"origins": ["*"], "methods": ["GET", "BAD METHOD"]}}, f"{P}.cors.methods[1]: invalid method 'BAD METHOD'"),
    ({"cors": {"origins": ["*"], "methods": ["GET", "get"]}}, f"{P}.cors.methods[1]: GET is listed twice"),
    ({"cors": {"origins": ["*"], "headers": ["Content Type"]}}, f"{P}.cors.headers[0]: invalid header name 'Content Type'"),
    ({"cors": {"origins": ["*"], "expose": "X-Total"}}, f"{P}.cors.expose: expected a list, got string 'X-Total'"),
    ({"cors": {"origins": ["*"], "max_age": "long"}}, f"{P}.cors.max_age: invalid duration 'long'"),
    ({"cors": {"origins": ["*"], "allow": True}}, f"{P}.cors.allow: unknown key"),
    ({"forward_auth": {"timeout": "3s"}}, f"{P}.forward_auth.url: required key is missing"),
    ({"forward_auth": {"url": "/api/verify"}}, f"{P}.forward_auth.url: URL '/api/verify' must be an absolute http:// or https:// URL"),
    ({"forward_auth": {"url": "ftp://auth.lan/verify"}}, f"{P}.forward_auth.url: URL 'ftp://auth.lan/verify' must be an absolute"),
    ({"forward_auth": {"url": "http://auth.lan/x#frag"}}, f"{P}.forward_auth.url: URL 'http://auth.lan/x#frag': no fragment allowed"),
    ({"forward_auth": {"url": "http://auth.lan/", "timeout": 0}}, f"{P}.forward_auth.timeout: duration 0 must be more than zero"),
    ({"forward_auth": {"url": "http://auth.lan/", "response_headers": ["Remote User"]}},
     f"{P}.forward_auth.response_headers[0]: invalid header name 'Remote User'"),
    ({"forward_auth": {"url": "http://auth.lan/", "response_headers": ["Transfer-Encoding"]}},
     f"{P}.forward_auth.response_headers[0]: Transfer-Encoding is managed by the proxy"),
    ({"forward_auth": {"url": "http://auth.lan/", "response_headers": ["Host"]}},
     f"{P}.forward_auth.response_headers[0]: Host cannot be copied"),
    ({"forward_auth": {"url": "http://auth.lan/", "timeout": "10m"}},
     f"{P}.forward_auth.timeout: duration '10m' is longer than 5m"),
    ({"rate_limit": {"requests": 5, "per": "4000d"}},
     f"{P}.rate_limit.per: duration '4000d' is longer than 3650d"),
    ({"load_balancing": {"health_check": {"interval": "2d"}}},
     f"{P}.load_balancing.health_check.interval: duration '2d' is longer than 1d"),
    ({"load_balancing": {"passive": {"cooldown": "25h"}}}, f"{P}.load_balancing.passive.cooldown: duration '25h' is longer than 1d"),
    ({"load_balancing": {"sticky": {"max_age": "600w"}}}, f"{P}.load_balancing.sticky.max_age: duration '600w' is longer than"),
    ({"cors": {"origins": ["*"], "max_age": "2d"}}, f"{P}.cors.max_age: duration '2d' is longer than 1d"),
    ({"cache": {"stale_if_error": "600w"}}, f"{P}.cache.stale_if_error: duration '600w' is longer than"),
    ({"forward_auth": {"url": "http://auth.lan/", "response_headers": ["Remote-User", "remote-user"]}},
     f"{P}.forward_auth.response_headers[1]: remote-user is listed twice"),
])
def test_each_invalid_feature_value_is_named_with_its_path(keys, expected):
    lines = error_lines(host_doc(**keys))
    assert any(line.startswith(expected) for line in lines), lines


@pytest.mark.parametrize("cache, expected", [
    ({"memory_bytes": "512k"}, "settings.cache.memory_bytes: the memory cache needs at least 1m, got '512k'"),
    ({"disk_bytes": 1000}, "settings.cache.disk_bytes: the disk cache is 0 (off) or at least 1m, got 1000"),
    ({"memory_bytes": "lots"}, "settings.cache.memory_bytes: invalid size 'lots'"),
    ({"memory_bytes": "2048g"}, "settings.cache.memory_bytes: the memory cache is at most 1024g, got '2048g'"),
    ({"disk_bytes": "20000g"}, "settings.cache.disk_bytes: the disk cache is at most 16384g, got '20000g'"),
    ({"size": "1g"}, "settings.cache.size: unknown key (expected one of: memory_bytes, disk_bytes)"),
])
def test_settings_cache_errors_are_named(cache, expected):
    lines = error_lines({"version": 1, "settings": {"cache": cache}})
    assert any(line.startswith(expected) for line in lines), lines


def test_every_error_of_a_host_is_reported_at_once():
    lines = error_lines(host_doc(load_balancing={"sticky": {"cookie": "a b"}, "passive": {"failures": 0}},
                                 cors={"origins": ["nope"]}, forward_auth={"url": "nope"}))
    assert len(lines) == 4, lines
