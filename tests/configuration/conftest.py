"""Shared fixtures: the contract example of issue 2, test certificates, a fast hasher."""
import copy
from types import SimpleNamespace

import pytest
import trustme
import yaml

# The example of issue 2 ("Config as code: the contract"), key for key.
CONTRACT_EXAMPLE = """\
version: 1
settings:
  default_site: {action: 404}
  acme: {email: me@example.test, directory: "https://acme-v02.api.letsencrypt.org/directory"}
  trusted_proxies: [10.0.0.0/8]
access_lists:
  - name: family
    satisfy: any
    pass_auth: false
    users: [{username: alice, password: "s3cret"}]
    rules: [{allow: 192.168.1.0/24}, {deny: all}]
certificates:
  - name: home
    provider: letsencrypt
    domains: [app.example.test]
proxy_hosts:
  - domains: [app.example.test]
    upstreams: ["http://10.0.1.10:3000", {url: "http://10.0.1.11:3000", weight: 2}]
    load_balancing: {policy: least_conn, health_check: {path: /health, interval: 10s}}
    websockets: true
    timeouts: {connect: 5s, response: 60s}
    max_body_size: 100m
    ssl: {certificate: home, force_https: true, http2: true, hsts: true, hsts_subdomains: false}
    access_list: family
    compression: [gzip, br, zstd]
    cache: {enabled: true, default_ttl: 5m}
    rate_limit: {requests: 100, per: 1m, key: ip, burst: 20}
    headers:
      request: {set: {X-Env: home}, remove: [X-Debug]}
      response: {set: {X-Frame-Options: DENY}, remove: [Server, X-Powered-By]}
    block_exploits: true
    locations:
      - {path: /static/, upstreams: ["http://10.0.1.10:3000"], cache: {enabled: true, default_ttl: 1d}}
redirection_hosts:
  - {domains: [old.example.test], to: "https://new.example.test", code: 301, preserve_path: true}
dead_hosts:
  - {domains: [gone.example.test]}
streams:
  - {listen: 2222, protocol: tcp, upstream: "10.0.0.5:22"}
"""


CLOUDFLARE_TOKEN = "cf-Token_0123456789abcdefghijklmnopqrstuv"
TSIG_SECRET = "c2VjcmV0LXRzaWcta2V5LWZvci1nYXRlaG91c2UtdGVzdHM="


@pytest.fixture
def contract():
    """The contract example as data, a fresh copy per test."""
    return copy.deepcopy(yaml.safe_load(CONTRACT_EXAMPLE))


@pytest.fixture(scope="session")
def tls():
    ca = trustme.CA()
    leaf = ca.issue_cert("secure.example.test", "*.secure.example.test")
    other = ca.issue_cert("other.example.test")
    return SimpleNamespace(
        cert=leaf.cert_chain_pems[0].bytes().decode(),
        key=leaf.private_key_pem.bytes().decode(),
        chain=ca.cert_pem.bytes().decode(),
        other_cert=other.cert_chain_pems[0].bytes().decode(),
        other_key=other.private_key_pem.bytes().decode(),
    )


@pytest.fixture
def full_document(contract, tls):
    """The contract example plus every other form a key can take: DNS providers of both
    kinds and a wildcard DNS-01 certificate, a custom certificate with chain, a disabled host, weights, header-keyed rate limits, header `add` rules, IPv6, UDP streams, and every traffic-feature key (issue #6)."""
    doc = contract
    doc["settings"]["default_site"] = {"action": "html", "body": "<h1>Nothing here</h1>\n<p>Move along.</p>\n"}
    doc["settings"]["trusted_proxies"].append("2001:db8::/32")
    doc["settings"]["acme"]["ca_bundle"] = "/etc/gatehouse/pebble.pem"
    doc["settings"]["tls"] = {"fallback": "reject"}
    doc["access_lists"].append({"name": "admins", "satisfy": "all", "pass_auth": True,
                                "users": [{"username": "root", "password": "hunter2"}],
                                "rules": [{"allow": "10.0.0.0/8"}, {"allow": "2001:db8::/48"}, {"deny": "all"}]})
    doc["dns_providers"] = [
        {"name": "cf", "kind": "cloudflare", "api_token": CLOUDFLARE_TOKEN, "propagation_seconds": 10},
        {"name": "bind", "kind": "rfc2136", "server": "192.168.1.53", "port": 5353, "key_name": "gatehouse-key.",
         "key_secret": TSIG_SECRET, "algorithm": "hmac-sha512", "propagation_seconds": 60},
    ]
    doc["certificates"].append({"name": "wild", "provider": "letsencrypt", "domains": ["*.lab.example.test", "lab.example.test"],
                                "challenge": "dns", "dns_provider": "bind"})
    doc["certificates"].append({"name": "lab", "provider": "custom", "domains": ["secure.example.test"],
                                "certificate_pem": tls.cert, "key_pem": tls.key, "chain_pem": tls.chain})
    doc["proxy_hosts"].append({
        "domains": ["secure.example.test", "*.secure.example.test"],
        "enabled": False,
        "upstreams": [{"url": "https://[2001:db8::10]:8443", "weight": 3},
                      {"url": "https://192.168.1.2:8006", "verify": False},
                      {"url": "https://nas.lan:443", "ca_pem": tls.chain}],
        "ssl": {"certificate": "lab", "force_https": True, "hsts": True, "hsts_preload": True},
        "access_list": "admins",
        "rate_limit": {"requests": 5, "per": "1s", "key": "header:X-Api-Key", "burst": 0},
        "timeouts": {"connect": "500ms", "response": "2h"},
        "locations": [{"path": "/api/", "compression": [], "rate_limit": {"requests": 1, "per": "10s"},
                       "headers": {"request": {"add": {"X-Via": "gatehouse"}},
                                   "response": {"set": {"X-Robots-Tag": "noindex", "Cache-Control": "no-store"},
                                                "add": {"Link": "</api/docs>; rel=help"}}}}],
    })
    # Every traffic-feature key (issue #6), each at a value other than its default.
    doc["settings"]["cache"] = {"memory_bytes": "256m", "disk_bytes": "10g"}
    doc["proxy_hosts"].append({
        "domains": ["media.example.test"],
        "upstreams": ["http://10.0.1.20:8096", "http://10.0.1.21:8096"],
        "load_balancing": {"policy": "least_conn", "sticky": {"cookie": "jf_route", "max_age": "1d"},
                           "health_check": {"path": "/health", "interval": "30s", "timeout": "5s", "expect": "200-299",
                                            "healthy": 1, "unhealthy": 5},
                           "passive": {"failures": 5, "window": "1m", "cooldown": "2m"}},
        "forward_auth": {"url": "http://127.0.0.1:9091/api/verify?rd=https://auth.example.test",
                         "response_headers": ["Remote-User", "Remote-Groups"], "timeout": "3s"},
        "cache": {"enabled": True, "default_ttl": "5m", "stale_if_error": "1h"},
        "security_headers": True,
        "hide_upstream_identity": True,
        "cors": {"origins": ["https://app.example.test", "http://localhost:5173"], "methods": ["GET", "POST"],
                 "headers": ["Content-Type"], "expose": ["X-Total-Count"], "credentials": True, "max_age": "1h"},
        "locations": [{"path": "/img/", "cache": {"enabled": True, "default_ttl": "1d", "stale_if_error": "10m"}}],
    })
    doc["proxy_hosts"].append({"domains": ["status.example.test"], "upstreams": ["http://10.0.1.30:3001"],
                               "load_balancing": {"health_check": {"path": "/", "interval": "1m", "expect": 204}},
                               "cors": {"origins": ["*"]}})
    doc["redirection_hosts"].append({"domains": ["www.example.test"], "to": "https://example.test/home", "code": 308,
                                     "preserve_path": False})
    doc["streams"].append({"listen": 5353, "protocol": "udp", "upstream": "[2001:db8::53]:53", "enabled": False})
    return doc


@pytest.fixture
def full_document_text(full_document):
    return yaml.safe_dump(full_document, sort_keys=False)


@pytest.fixture(autouse=True)
def fast_password_hasher(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
