import pytest

from manager.lib import validators as v


@pytest.mark.parametrize("raw, expected", [
    ("App.Example.TEST", "app.example.test"),
    ("app.example.test.", "app.example.test"),
    ("*.Example.test", "*.example.test"),
    ("bücher.example", "xn--bcher-kva.example"),
])
def test_hostname_is_canonicalised(raw, expected):
    assert v.hostname(raw) == expected


@pytest.mark.parametrize("raw, message", [
    ("a.*.example.test", "wildcard may only be the whole first label"),
    ("*app.example.test", "wildcard may only be the whole first label"),
    ("*.test", "at least two labels"),
    ("-bad.example.test", "invalid domain name"),
    ("a" * 64 + ".test", "invalid domain name"),
    ("10.0.0.1", "an IP address is not a domain name"),
    ("", "non-empty"),
    ("exa mple.test", "invalid domain name"),
])
def test_hostname_rejects(raw, message):
    with pytest.raises(v.Invalid, match=message):
        v.hostname(raw)


def test_wildcard_refused_where_not_allowed():
    with pytest.raises(v.Invalid, match="wildcard not allowed"):
        v.hostname("*.example.test", allow_wildcard=False)


@pytest.mark.parametrize("raw", [0, 70000, -1, True, "http", 3.5])
def test_port_rejects(raw):
    with pytest.raises(v.Invalid):
        v.port(raw)


def test_port_message_names_the_value():
    with pytest.raises(v.Invalid, match="port 70000 out of range"):
        v.port(70000)


@pytest.mark.parametrize("raw, expected", [
    ("http://10.0.1.10:3000", ("http", "10.0.1.10", 3000)),
    ("https://nas.lan", ("https", "nas.lan", 443)),
    ("HTTP://Grafana.LAN/", ("http", "grafana.lan", 80)),
    ("http://[::1]:8080", ("http", "::1", 8080)),
])
def test_upstream_url_parses(raw, expected):
    assert v.upstream_url(raw) == expected
    assert v.upstream_url(v.format_upstream_url(*expected)) == expected


@pytest.mark.parametrize("raw, message", [
    ("ftp://host:21", "scheme must be http or https"),
    ("http://host:70000", "port 70000 out of range"),
    ("http://host:3000/path", "no path"),
    ("host:3000", "must look like"),
    ("http://:3000", "missing host"),
    ("http://user@host:80", "credentials in the URL are not allowed"),
])
def test_upstream_url_rejects(raw, message):
    with pytest.raises(v.Invalid, match=message):
        v.upstream_url(raw)


@pytest.mark.parametrize("raw, expected", [
    ("10.0.0.0/8", "10.0.0.0/8"),
    ("192.168.1.7/24", "192.168.1.0/24"),
    ("10.0.0.1", "10.0.0.1/32"),
    ("2001:DB8::/32", "2001:db8::/32"),
])
def test_cidr_is_canonicalised(raw, expected):
    assert v.cidr(raw) == expected


@pytest.mark.parametrize("raw", ["10.0.0.0/33", "300.1.1.1", "all", "", "fe80::/129"])
def test_cidr_rejects(raw):
    with pytest.raises(v.Invalid, match="invalid IP address or CIDR"):
        v.cidr(raw)


def test_access_source_accepts_all():
    assert v.access_source("ALL") == "all"


@pytest.mark.parametrize("name", ["X-Api-Key", "x_custom", "Accept"])
def test_header_name_accepts_tokens(name):
    assert v.header_name(name) == name


@pytest.mark.parametrize("name", ["X Bad", "X:Bad", "", "X\r\nY", "Ünicode"])
def test_header_name_rejects(name):
    with pytest.raises(v.Invalid):
        v.header_name(name)


@pytest.mark.parametrize("value", ["a\r\nSet-Cookie: x=1", "a\nb", "a\rb", "nul\x00", "del\x7f", "bell\x07"])
def test_header_value_rejects_control_characters(value):
    with pytest.raises(v.Invalid, match="control character"):
        v.header_value(value)


def test_header_value_allows_tab_and_trims():
    assert v.header_value(" max-age=1;\tpreload ") == "max-age=1;\tpreload"


@pytest.mark.parametrize("raw, seconds, canonical", [
    ("10s", 10.0, "10s"), ("5m", 300.0, "5m"), ("1d", 86400.0, "1d"), ("90s", 90.0, "90s"),
    ("250ms", 0.25, "250ms"), (60, 60.0, "1m"), ("1.5s", 1.5, "1500ms"), ("2h", 7200.0, "2h"),
])
def test_duration_round_trips(raw, seconds, canonical):
    assert v.duration(raw) == seconds
    assert v.format_duration(seconds) == canonical
    assert v.duration(canonical) == seconds


@pytest.mark.parametrize("raw", ["10 parsecs", "-5s", "", "s", True, None])
def test_duration_rejects(raw):
    with pytest.raises(v.Invalid, match="invalid duration"):
        v.duration(raw)


@pytest.mark.parametrize("raw, total, canonical", [
    ("100m", 100 * 1024**2, "100m"), ("512k", 512 * 1024, "512k"), ("1g", 1024**3, "1g"),
    (1500, 1500, "1500"), ("2048", 2048, "2k"), ("64MiB", 64 * 1024**2, "64m"), ("10 GB", 10 * 1024**3, "10g"),
    ("300b", 300, "300"),
])
def test_size_round_trips(raw, total, canonical):
    assert v.size(raw) == total
    assert v.format_size(total) == canonical


@pytest.mark.parametrize("raw", ["100x", "-1m", "1.5m", "", None, "64ib", "64mbb"])
def test_size_rejects(raw):
    with pytest.raises(v.Invalid, match="invalid size"):
        v.size(raw)


def test_web_url_rejects_relative_and_spaces():
    with pytest.raises(v.Invalid):
        v.web_url("/relative")
    with pytest.raises(v.Invalid):
        v.web_url("https://a b.test")
    assert v.web_url("https://new.example.test/x?y=1") == "https://new.example.test/x?y=1"


def test_host_port_parses_ipv6_and_names():
    assert v.host_port("[::1]:22") == ("::1", 22)
    assert v.host_port("nas.lan:2222") == ("nas.lan", 2222)
    with pytest.raises(v.Invalid):
        v.host_port("nas.lan")


@pytest.fixture(scope="module")
def issued():
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    return ca.issue_cert("app.example.test", "*.apps.example.test"), ca.issue_cert("other.example.test")


def test_certificate_with_matching_key_parses(issued):
    cert, _ = issued
    cert_pem = cert.cert_chain_pems[0].bytes().decode()
    key_pem = cert.private_key_pem.bytes().decode()
    leaf = v.certificate_with_key(cert_pem, key_pem)
    assert v.certificate_names(leaf) == ["app.example.test", "*.apps.example.test"]


def test_certificate_with_foreign_key_is_refused(issued):
    cert, other = issued
    with pytest.raises(v.Invalid, match="does not match the certificate"):
        v.certificate_with_key(cert.cert_chain_pems[0].bytes().decode(), other.private_key_pem.bytes().decode())


def test_garbage_pem_is_refused():
    with pytest.raises(v.Invalid, match="does not parse"):
        v.certificate_chain("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    with pytest.raises(v.Invalid, match="not a PEM private key"):
        v.private_key("hello")


@pytest.mark.parametrize("name, covered", [
    ("app.example.test", True), ("x.apps.example.test", True), ("apps.example.test", False),
    ("a.b.apps.example.test", False), ("*.apps.example.test", True), ("*.example.test", False),
])
def test_name_covered_follows_one_label_wildcards(name, covered):
    assert v.name_covered(name, ["app.example.test", "*.apps.example.test"]) is covered
