"""Shared pieces of the ACME end-to-end tests (test_acme.py, test_acme_dns.py): pebble with its
own API certificate, pebble-challtestsrv, a real BIND `named` accepting RFC 2136 updates, and
checking an issued chain against pebble's root. Every process listens on 127.0.0.1 only."""
import base64
import json
import os
import shutil
import ssl
import subprocess
import time
import urllib.request

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, padding

from tests.live import free_port


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def make_api_certificate(directory):
    """The TESTING.md recipe: a throwaway CA and pebble's API certificate for 127.0.0.1."""
    def run(*args):
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=test CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "key.pem", "-out", "api.csr", "-subj", "/CN=localhost")
    (directory / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                                       "extendedKeyUsage=serverAuth\n")
    run("x509", "-req", "-in", "api.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "cert.pem", "-days", "2", "-extfile", "ext.cnf")


class Pebble:
    def __init__(self, directory, http_port, dns_port):
        self.directory = directory
        self.ca_bundle = str(directory / "ca.pem")
        self.listen = free_port()
        self.management = free_port()
        (directory / "pebble.json").write_text(json.dumps({"pebble": {
            "listenAddress": f"127.0.0.1:{self.listen}", "managementListenAddress": f"127.0.0.1:{self.management}",
            "certificate": "cert.pem", "privateKey": "key.pem", "httpPort": http_port, "tlsPort": free_port(),
            "ocspResponderURL": "", "externalAccountBindingRequired": False}}))
        env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"}
        self.proc = subprocess.Popen(["pebble", "-config", "pebble.json", "-dnsserver", f"127.0.0.1:{dns_port}",
                                      "-strict=false"], cwd=directory, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.context = ssl.create_default_context(cafile=self.ca_bundle)
        wait_until(lambda: self.get(f"https://127.0.0.1:{self.listen}/dir"), 20, "pebble")

    @property
    def directory_url(self):
        return f"https://127.0.0.1:{self.listen}/dir"

    def get(self, url):
        with urllib.request.urlopen(url, context=self.context, timeout=5) as response:
            return response.read()

    def root(self):
        return x509.load_pem_x509_certificate(self.get(f"https://127.0.0.1:{self.management}/roots/0"))

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


class ChallTestSrv:
    def __init__(self):
        self.dns = free_port()
        self.management = free_port()
        self.proc = subprocess.Popen(
            ["pebble-challtestsrv", "-dns01", f"127.0.0.1:{self.dns}", "-http01", "", "-https01", "",
             "-tlsalpn01", "", "-management", f"127.0.0.1:{self.management}", "-defaultIPv4", "127.0.0.1",
             "-defaultIPv6", ""], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: self.post("/clear-a", {"host": "probe.example.test"}), 20, "challtestsrv")

    def post(self, path, body):
        request = urllib.request.Request(f"http://127.0.0.1:{self.management}{path}", data=json.dumps(body).encode())
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status == 200

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


def verify_chain(certificate, root):
    """Each certificate of leaf + chain is signed by the next, the last by pebble's root."""
    chain = x509.load_pem_x509_certificates((certificate.certificate_pem + certificate.chain_pem).encode())
    for child, parent in zip(chain, chain[1:] + [root]):
        key = parent.public_key()
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(child.signature, child.tbs_certificate_bytes, ec.ECDSA(child.signature_hash_algorithm))
        else:
            key.verify(child.signature, child.tbs_certificate_bytes, padding.PKCS1v15(), child.signature_hash_algorithm)
    return chain[0]


class Named:
    """BIND's named on a free 127.0.0.1 port, primary for `zone` (SOA, NS, and A 127.0.0.1 for
    the apex and every name below it), accepting RFC 2136 updates of TXT records signed with
    a TSIG key (hmac-sha256)."""

    KEY_NAME = "gatehouse-key"

    def __init__(self, directory, zone="example.test"):
        self.directory = directory
        self.zone = zone
        self.port = free_port()
        self.secret = base64.b64encode(os.urandom(32)).decode()
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{zone}.zone").write_text(
            "$TTL 60\n"
            f"@ IN SOA ns.{zone}. hostmaster.{zone}. 1 60 60 3600 60\n"
            f"@ IN NS ns.{zone}.\n"
            "ns IN A 127.0.0.1\n"
            "@ IN A 127.0.0.1\n"
            "* IN A 127.0.0.1\n")
        (directory / "named.conf").write_text(f"""
options {{
  directory "{directory}";
  listen-on port {self.port} {{ 127.0.0.1; }};
  listen-on-v6 {{ none; }};
  pid-file "{directory}/named.pid";
  session-keyfile "{directory}/session.key";
  managed-keys-directory "{directory}";
  recursion no;
  dnssec-validation no;
  notify no;
}};
controls {{ }};
key "{self.KEY_NAME}" {{ algorithm hmac-sha256; secret "{self.secret}"; }};
zone "{zone}" {{
  type primary;
  file "{directory}/{zone}.zone";
  update-policy {{ grant {self.KEY_NAME} zonesub TXT; }};
}};
""")
        self.log = open(directory / "named.log", "wb")
        self.proc = subprocess.Popen([named_executable(), "-g", "-4", "-c", str(directory / "named.conf")],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        wait_until(lambda: self.proc.poll() is None and b"running" in (directory / "named.log").read_bytes(), 20,
                   f"named (log: {directory / 'named.log'})")

    def txt(self, name):
        """The TXT strings named serves for `name` (dnspython, straight to this server)."""
        import dns.message
        import dns.query
        import dns.rdatatype

        response = dns.query.udp(dns.message.make_query(name, "TXT"), "127.0.0.1", port=self.port, timeout=3)
        return sorted(b"".join(r.strings).decode() for rrset in response.answer
                      if rrset.rdtype == dns.rdatatype.TXT for r in rrset)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def named_executable():
    return shutil.which("named") or ("/usr/sbin/named" if os.path.exists("/usr/sbin/named") else None)
