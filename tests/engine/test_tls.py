"""TLS: the table built with the snapshot (unit), and the engine serving HTTPS as a real
process (one per module) with trustme CAs: SNI selection and fallbacks, protocol versions,
reload, a broken certificate, force HTTPS, HSTS, upstream HTTPS with and without verification."""
import datetime
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
from http.server import ThreadingHTTPServer

import pytest
import trustme
from cryptography import x509
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from proxy_engine import tls
from proxy_engine.errors import TlsHandshakeFailed
from proxy_engine.routing import Router
from proxy_engine.snapshot import SnapshotError, parse_snapshot
from tests.engine.support import Harness, document
from tests.live import Upstream, engine_process, start_upstream, stop_upstream, write_doc

NOW = datetime.datetime.now(datetime.timezone.utc)
LIFE = dict(not_before=NOW - datetime.timedelta(days=1), not_after=NOW + datetime.timedelta(days=90))


def pem(blob):
    return blob.bytes().decode()


def certificate(name, leaf, chain=""):
    return {"name": name, "domains": [], "certificate_pem": pem(leaf.cert_chain_pems[0]),
            "key_pem": pem(leaf.private_key_pem), "chain_pem": chain}


def host(host_id, domains, cert=None, upstreams=None, **ssl_flags):
    return {"id": host_id, "domains": domains,
            "upstreams": upstreams or [{"scheme": "http", "host": "127.0.0.1", "port": 9, "weight": 1}],
            "timeouts": {"connect": 2.0, "response": 5.0}, "max_body_size": None, "locations": [],
            "ssl": {"certificate": cert, "force_https": False, "http2": False, "hsts": False,
                    "hsts_subdomains": False, **ssl_flags}}


# -- the table, without sockets ---------------------------------------------------------------

@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


def table_doc(ca, broken=False):
    app = ca.issue_cert("app.example.test", key_type=trustme.KeyType.RSA)
    wild = ca.issue_cert("*.apps.example.test")
    certs = [certificate("app", app), certificate("wild", wild)]
    if broken:
        certs.append({**certificate("bad", app), "key_pem": pem(wild.private_key_pem)})   # key mismatch
    return document(proxy_hosts=[
        host(1, ["app.example.test"], "app", http2=True),
        host(2, ["*.apps.example.test"], "wild"),
        host(3, ["bad.example.test"], "bad" if broken else None),
        host(4, ["missing.example.test"], "nobody-has-this"),
    ], certificates=certs, redirection_hosts=[], dead_hosts=[])


def test_the_table_maps_exact_and_wildcard_names_and_skips_what_it_cannot_serve(ca):
    table = tls.build_table(parse_snapshot(table_doc(ca, broken=True)))
    assert table.lookup(b"app.example.test")[1] is True
    assert table.lookup(b"APP.example.test.")[0] is table.lookup(b"app.example.test")[0]
    assert table.lookup(b"x.apps.example.test")[1] is False
    assert table.lookup(b"a.b.apps.example.test") is None          # a wildcard is one label
    assert table.lookup(b"bad.example.test") is None
    assert table.lookup(None) is None
    assert table.served_hosts == {1, 2}
    reasons = dict(table.problems)
    assert reasons["bad"] == "the key does not match the certificate"
    assert reasons["nobody-has-this"] == "not among the snapshot's certificates"


def test_a_certificate_that_does_not_parse_is_a_problem_not_a_refused_snapshot(ca):
    doc = table_doc(ca)
    doc["certificates"][0]["certificate_pem"] = "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"
    table = tls.build_table(parse_snapshot(doc))
    assert table.lookup(b"app.example.test") is None
    assert table.lookup(b"x.apps.example.test") is not None
    assert dict(table.problems)["app"].startswith("certificate does not parse")


def test_a_certificate_with_a_wrong_type_is_refused_with_its_path_and_no_secret(ca):
    doc = table_doc(ca)
    doc["certificates"][0]["key_pem"] = 42
    with pytest.raises(SnapshotError) as caught:
        parse_snapshot(doc)
    assert "certificates[0].key_pem: must be a string, got a secret value" in str(caught.value)


def test_alpn_offers_h2_only_for_hosts_with_http2_and_a_plugged_in_protocol(ca):
    table = tls.build_table(parse_snapshot(table_doc(ca)))

    class Conn:
        def __init__(self, name):
            self.name = name

        def get_servername(self):
            return self.name

    server = tls.TlsServer(h2_enabled=True)
    server.swap(table)
    assert server.select_alpn(Conn(b"app.example.test"), [b"h2", b"http/1.1"]) == b"h2"
    assert server.select_alpn(Conn(b"x.apps.example.test"), [b"h2", b"http/1.1"]) == b"http/1.1"
    assert server.select_alpn(Conn(None), [b"h2"]) is SSL.NO_OVERLAPPING_PROTOCOLS
    server.h2_enabled = False
    assert server.select_alpn(Conn(b"app.example.test"), [b"h2", b"http/1.1"]) == b"http/1.1"


def test_routes_carry_force_https_and_hsts_built_once_per_snapshot(ca):
    doc = table_doc(ca)
    doc["proxy_hosts"][0]["ssl"].update(force_https=True, hsts=True, hsts_subdomains=True)
    doc["proxy_hosts"][3]["ssl"].update(force_https=True)        # no usable certificate: no redirect
    snapshot = tls.attach(parse_snapshot(doc))
    plain = Router(snapshot, b"http", 8443)
    assert plain.route(b"app.example.test").force_https == b":8443"
    assert Router(snapshot, b"http", 443).route(b"app.example.test").force_https == b""
    assert plain.route(b"missing.example.test").force_https is None
    assert plain.route(b"app.example.test").hsts == b""
    secure = Router(snapshot, b"https")
    assert secure.route(b"app.example.test").force_https is None
    assert secure.route(b"app.example.test").hsts == (
        b"Strict-Transport-Security: max-age=31536000; includeSubDomains\r\n")
    assert secure.route(b"x.apps.example.test").hsts == b""


def test_hsts_preload_is_added_when_asked(ca):
    doc = table_doc(ca)
    doc["proxy_hosts"][0]["ssl"].update(hsts=True, hsts_preload=True)
    secure = Router(tls.attach(parse_snapshot(doc)), b"https")
    assert secure.route(b"app.example.test").hsts == b"Strict-Transport-Security: max-age=31536000; preload\r\n"


def test_https_upstreams_are_pooled_apart_by_their_tls_options():
    doc = document()
    doc["proxy_hosts"][0]["upstreams"] = [
        {"scheme": "https", "host": "10.0.1.10", "port": 443, "weight": 1},
        {"scheme": "https", "host": "10.0.1.10", "port": 443, "weight": 1, "verify": False},
    ]
    plain, unverified = parse_snapshot(doc).proxy_hosts[0].upstreams
    assert plain.address != unverified.address
    assert (plain.verify, unverified.verify) == (True, False)


def test_an_https_upstream_is_dialled_with_tls_and_a_failed_handshake_is_a_502():
    doc = document()
    doc["proxy_hosts"][0]["upstreams"] = [{"scheme": "https", "host": "10.0.1.10", "port": 443, "weight": 1,
                                           "verify": False}]
    h = Harness(doc)
    snapshot = tls.attach(parse_snapshot(doc))
    h.factory.pool.client_tls = snapshot.tls.upstreams
    proto, transport = h.client()
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: app.example.test\r\n\r\n")
    host, port, attempt, creator, timeout, _ = h.reactor.sslClients[-1]
    assert (host, port) == ("10.0.1.10", 443)
    assert creator is snapshot.tls.upstreams[snapshot.proxy_hosts[0].upstreams[0].address]
    conn = attempt.buildProtocol(None)
    conn.makeConnection(StringTransport())
    conn.connectionLost(Failure(SSL.Error([("SSL routines", "", "certificate verify failed")])))
    head = transport.value().decode()
    assert head.startswith("HTTP/1.1 502 ")
    assert TlsHandshakeFailed.cause in head
    assert "certificate verify failed" in h.events.events[-1]["detail"]


# -- the engine as a process ------------------------------------------------------------------

class SniUpstream(ThreadingHTTPServer):
    """An HTTPS upstream that records the SNI name of every handshake."""
    daemon_threads = True


def start_tls_upstream(leaf):
    server = SniUpstream(("127.0.0.1", 0), Upstream)
    server.name = "tls-upstream"
    server.sni = []
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(context)
    context.sni_callback = lambda sock, name, ctx: server.sni.append(name)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class Rig:
    def __init__(self, tmp):
        self.ca = trustme.CA()
        self.other_ca = trustme.CA()
        self.upstream_ca = trustme.CA()
        self.plain = start_upstream("plain")
        self.secure = start_tls_upstream(self.upstream_ca.issue_cert("localhost"))
        self.certs = {
            "app": self.ca.issue_cert("app.example.test", **LIFE, key_type=trustme.KeyType.RSA),
            "wild": self.ca.issue_cert("*.apps.example.test", **LIFE),
            "later": self.ca.issue_cert("later.example.test", **LIFE),
        }
        self.doc_path = tmp / "snapshot.json"
        self.revision = 1
        write_doc(self.doc_path, self.doc())
        self.engine = engine_process(self.doc_path, "--poll-interval", "0.1", https=True)
        self.https_port = self.engine.https_port
        self.engine.wait_for(lambda r, d: r.status != 503)

    def doc(self, fallback="self_signed", later=False, broken=False):
        up = self.plain.server_address[1]
        secure = {"scheme": "https", "host": "localhost", "port": self.secure.server_address[1], "weight": 1}
        plain = [{"scheme": "http", "host": "127.0.0.1", "port": up, "weight": 1}]
        certs = [certificate("app", self.certs["app"]), certificate("wild", self.certs["wild"])]
        if later:
            certs.append(certificate("later", self.certs["later"]))
        if broken:
            certs[1] = {**certs[1], "key_pem": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}
        return {
            "revision": self.revision,
            "settings": {"default_site": {"action": "404"}, "trusted_proxies": [], "tls_fallback": fallback},
            "proxy_hosts": [
                host(1, ["app.example.test"], "app", plain, force_https=True, hsts=True, hsts_subdomains=True),
                host(2, ["*.apps.example.test"], "wild", plain),
                host(3, ["later.example.test"], "later", plain),
                host(4, ["verified.example.test"], None, [{**secure, "ca_pem": pem(self.upstream_ca.cert_pem)}]),
                host(5, ["wrong-ca.example.test"], None, [{**secure, "ca_pem": pem(self.other_ca.cert_pem)}]),
                host(6, ["unverified.example.test"], None, [{**secure, "verify": False}]),
                host(7, ["platform.example.test"], None, [secure]),
            ],
            "redirection_hosts": [], "dead_hosts": [], "streams": [], "access_lists": [],
            "certificates": certs,
        }

    def publish(self, **options):
        self.revision += 1
        write_doc(self.doc_path, self.doc(**options))

    def context(self, trusted=True):
        context = ssl.create_default_context()
        if trusted:
            self.ca.configure_trust(context)
        else:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def handshake(self, name, context=None):
        """The TLS socket to the engine's HTTPS port with SNI `name`."""
        raw = socket.create_connection(("127.0.0.1", self.https_port), timeout=5)
        try:
            return (context or self.context()).wrap_socket(raw, server_hostname=name)
        except BaseException:
            raw.close()
            raise

    def get(self, name, path="/", context=None):
        with self.handshake(name, context) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
            response = http.client.HTTPResponse(sock)
            response.begin()
            return response, response.read()

    def stop(self):
        output = self.engine.stop()
        stop_upstream(self.plain)
        self.secure.shutdown()
        self.secure.server_close()
        return output


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    rig = Rig(tmp_path_factory.mktemp("tls"))
    yield rig
    rig.stop()


def subject_cn(sock):
    cert = x509.load_der_x509_certificate(sock.getpeercert(binary_form=True))
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value if cert.subject else ""


def san(sock):
    cert = x509.load_der_x509_certificate(sock.getpeercert(binary_form=True))
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)


def test_sni_selects_the_exact_certificate_and_the_request_is_forwarded_as_https(rig):
    response, body = rig.get("app.example.test", "/hello")
    assert response.status == 200
    seen = json.loads(body)
    assert seen["path"] == "/hello"
    assert seen["headers"]["x-forwarded-proto"] == "https"


def test_pipelined_requests_and_a_large_upload_on_one_connection_are_answered_in_order(rig):
    # Several requests in one TLS read and a body spanning many records and reads: every
    # record is decrypted and every answer leaves, in order (tls.TlsTransport's loops).
    import hashlib
    body = os.urandom(300_000)
    with rig.handshake("app.example.test") as sock:
        sock.sendall(b"".join(f"GET /p{i} HTTP/1.1\r\nHost: app.example.test\r\n\r\n".encode() for i in range(20)))
        sock.sendall(b"POST /up HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: %d\r\n\r\n" % len(body)
                     + body)
        sock.sendall(b"GET /last HTTP/1.1\r\nHost: app.example.test\r\nConnection: close\r\n\r\n")
        answers = []
        for _ in range(22):
            response = http.client.HTTPResponse(sock)
            response.begin()
            answers.append((response.status, json.loads(response.read())))
    assert [a[1]["path"] for a in answers[:20]] == [f"/p{i}" for i in range(20)]
    assert answers[20] == (200, {"length": len(body), "sha": hashlib.sha256(body).hexdigest()})
    assert answers[21][1]["path"] == "/last"


def test_sni_selects_the_wildcard_certificate(rig):
    with rig.handshake("x.apps.example.test") as sock:
        assert san(sock) == ["*.apps.example.test"]
    response, _ = rig.get("x.apps.example.test")
    assert response.status == 200


def test_an_unknown_name_gets_the_self_signed_default_certificate(rig):
    with rig.handshake("nobody.example.test", rig.context(trusted=False)) as sock:
        assert san(sock) == ["gatehouse.invalid"]
    with pytest.raises(ssl.SSLCertVerificationError):
        rig.handshake("nobody.example.test")


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_1_2_and_1_3_are_served(rig, version):
    context = rig.context()
    context.minimum_version = context.maximum_version = version
    with rig.handshake("app.example.test", context) as sock:
        assert sock.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
def test_tls_1_0_and_1_1_are_refused(rig):
    context = rig.context(trusted=False)
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError):
        rig.handshake("app.example.test", context)


def test_sessions_resume(rig):
    context = rig.context()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with rig.handshake("app.example.test", context) as sock:
        session = sock.session
    raw = socket.create_connection(("127.0.0.1", rig.https_port), timeout=5)
    with context.wrap_socket(raw, server_hostname="app.example.test", session=session) as sock:
        assert sock.session_reused


def test_force_https_redirects_plain_http_but_not_acme_challenges(rig):
    response, _ = rig.engine.request("GET", "/a/b?c=1", host="app.example.test")
    assert response.status == 301
    assert response.getheader("Location") == f"https://app.example.test:{rig.https_port}/a/b?c=1"
    response, _ = rig.engine.request("GET", "/.well-known/acme-challenge/unknown-token", host="app.example.test")
    assert response.status != 301
    response, _ = rig.engine.request("GET", "/", host="x.apps.example.test")
    assert response.status == 200


def test_hsts_is_sent_on_https_for_hosts_that_ask_for_it(rig):
    response, _ = rig.get("app.example.test")
    assert response.getheader("Strict-Transport-Security") == "max-age=31536000; includeSubDomains"
    response, _ = rig.get("x.apps.example.test")
    assert response.getheader("Strict-Transport-Security") is None


def test_upstream_https_with_a_trusted_ca_works_and_sends_sni(rig):
    response, body = rig.get("verified.example.test", context=rig.context(trusted=False))
    assert response.status == 200, body
    assert json.loads(body)["server"] == "tls-upstream"
    assert "localhost" in rig.secure.sni


def test_upstream_https_with_the_wrong_ca_is_a_502(rig):
    response, body = rig.get("wrong-ca.example.test", context=rig.context(trusted=False))
    assert response.status == 502
    assert b"TLS handshake with the upstream failed" in body
    response, body = rig.get("platform.example.test", context=rig.context(trusted=False))
    assert response.status == 502


def test_upstream_https_without_verification_accepts_an_unknown_ca(rig):
    response, body = rig.get("unverified.example.test", context=rig.context(trusted=False))
    assert response.status == 200, body


def test_reload_serves_a_new_certificate_keeps_others_when_one_breaks_and_can_reject(rig):
    with rig.handshake("later.example.test", rig.context(trusted=False)) as sock:
        assert san(sock) == ["gatehouse.invalid"]
    rig.publish(later=True)
    rig.engine.wait_for(lambda r, d: True)

    def serves_later():
        try:
            with rig.handshake("later.example.test"):
                return True
        except ssl.SSLError:
            return False
    _until(serves_later)
    rig.publish(later=True, broken=True)
    _until(lambda: san(rig.handshake("x.apps.example.test", rig.context(trusted=False))) == ["gatehouse.invalid"])
    assert rig.get("app.example.test")[0].status == 200             # the others are untouched
    rig.publish(fallback="reject")

    def rejects():
        try:
            rig.handshake("nobody.example.test", rig.context(trusted=False)).close()
            return False
        except ssl.SSLError as exc:
            return "UNRECOGNIZED_NAME" in str(exc).upper()
    _until(rejects)
    assert rig.get("app.example.test")[0].status == 200
    rig.publish()


def _until(predicate, timeout=10.0):
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition never held")


def _sslyze():
    return os.environ.get("SSLYZE") or shutil.which("sslyze")


@pytest.mark.skipif(not _sslyze(), reason="sslyze not installed (SSLYZE=path/to/sslyze to run it)")
def test_sslyze_finds_the_configuration_mozilla_intermediate(rig, tmp_path):
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(rig.ca.cert_pem.bytes())
    result = subprocess.run(
        [_sslyze(), "--mozilla_config=intermediate", "--certinfo", f"--certinfo_ca_file={ca_file}",
         "--tlsv1", "--tlsv1_1", "--tlsv1_2", "--tlsv1_3", "--elliptic_curves",
         f"app.example.test:{rig.https_port}{{127.0.0.1}}"],
        capture_output=True, text=True, timeout=120)
    # Every check passes except the trust of trustme's CA, which sslyze requires from its
    # public trust stores (no private CA can pass that one).
    report = result.stdout[result.stdout.index("COMPLIANCE AGAINST"):]
    problems = [line.strip() for line in report.splitlines() if line.strip().startswith("* ")]
    assert all(p.startswith("* certificate_path_validation:") for p in problems), report
    assert "is compliant" in report or problems, report
