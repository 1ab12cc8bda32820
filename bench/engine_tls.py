"""TLS throughput and handshakes of the engine against nginx, alternating (not a test).

    .venv/bin/python bench/engine_tls.py [--rounds 5] [--duration 4] [--connections 50]

The same ECDSA P-256 certificate (made here) on both, TLS 1.2 + 1.3, one worker each, in
front of the nginx upstream of `common.Rig` serving 1 KiB. wrk sends no usable SNI (it
connects to 127.0.0.1), so the engine serves that certificate as its default
(`--default-certificate`) and nginx as its only server's.

- keep-alive: `wrk -t1 -cN -dDs https://...` (one handshake per connection, then requests);
- handshakes: the same with `Connection: close`: every request is a new TCP connection and a
  full TLS handshake (wrk does not resume sessions), so requests/s = handshakes/s.

Each is run against each proxy in turn, `--rounds` times; the median ratio engine/nginx is
printed. The keep-alive rounds also load the engine's plain HTTP port ("engine-http", the same
route without TLS) as the ceiling a TLS transport could reach on the same machine.
"""
import argparse
import datetime
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (HOST, KEEPALIVE, NGINX_HEAD, ROOT, Rig, free_port, median_ratio, start_nginx, wait_port,  # noqa: E402
                    wrk, wrk_run)

NGINX_TLS = NGINX_HEAD + KEEPALIVE + """  upstream app {{ server 127.0.0.1:{upstream}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {tmp}/tls.pem; ssl_certificate_key {tmp}/tls.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305;
    ssl_session_cache shared:SSL:10m; ssl_session_tickets on;
    location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";
                 proxy_set_header Host $host; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; }}
  }}
}}
"""


def make_certificate(path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(HOST)]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    with open(path, "w") as handle:
        handle.write(cert_pem + key_pem)
    return cert_pem, key_pem


def wrk_tls(port, duration, connections, close=False):
    return wrk_run(port, duration, connections, headers=["Connection: close"] if close else (), scheme="https")[0]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=4)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--compare", metavar="DIR",
                        help="also run the engine from DIR (a tree holding another proxy_engine, e.g. "
                             "`git archive HEAD proxy_engine | tar -x -C DIR`) as engine-ref, same rounds")
    args = parser.parse_args()
    with Rig() as rig:
        tmp = rig.tmp
        cert_pem, key_pem = make_certificate(f"{tmp}/tls.pem")
        nginx_port, engine_port, engine_http = free_port(), free_port(), free_port()
        doc = {"revision": 1, "settings": {"default_site": {"action": "404"}, "trusted_proxies": []},
               "proxy_hosts": [{"id": 1, "domains": [HOST], "max_body_size": None,
                                "upstreams": [{"scheme": "http", "host": "127.0.0.1", "port": rig.upstream,
                                               "weight": 1}],
                                "ssl": {"certificate": "bench", "force_https": False, "http2": False,
                                        "hsts": False, "hsts_subdomains": False}}],
               "certificates": [{"name": "bench", "domains": [HOST], "certificate_pem": cert_pem,
                                 "key_pem": key_pem, "chain_pem": ""}]}
        with open(f"{tmp}/tls-snapshot.json", "w") as handle:
            json.dump(doc, handle)
        procs = [
            start_nginx(tmp, "-tls", NGINX_TLS.format(tmp=tmp, name="-tls", upstream=rig.upstream, port=nginx_port)),
            subprocess.Popen([sys.executable, "-m", "proxy_engine", "--document-file", f"{tmp}/tls-snapshot.json",
                              "--http-port", str(engine_http), "--https-port", str(engine_port),
                              "--default-certificate", f"{tmp}/tls.pem", "--log-level", "ERROR"], cwd=ROOT),
        ]
        systems = {"nginx": nginx_port, "engine": engine_port}
        if args.compare:
            ref_port = free_port()
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "proxy_engine", "--document-file", f"{tmp}/tls-snapshot.json",
                 "--http-port", str(free_port()), "--https-port", str(ref_port),
                 "--default-certificate", f"{tmp}/tls.pem", "--log-level", "ERROR"],
                cwd=args.compare, env=dict(os.environ, PYTHONPATH=args.compare)))
            systems["engine-ref"] = ref_port
        try:
            for port in systems.values():
                wait_port(port)
            time.sleep(0.5)
            for port in systems.values():
                wrk_tls(port, 1, args.connections)            # warm up
            for label, close in (("keep-alive requests/s", False), ("new handshakes/s (Connection: close)", True)):
                results = {name: [] for name in systems}
                if not close:
                    results["engine-http"] = []
                for _ in range(args.rounds):
                    for name, port in systems.items():
                        results[name].append(wrk_tls(port, args.duration, args.connections, close))
                    if not close:
                        results["engine-http"].append(wrk(engine_http, args.duration, args.connections))
                print(f"{label}: wrk -t1 -c{args.connections} -d{args.duration}s https, 1 KiB, "
                      f"{args.rounds} rounds alternating")
                for name, values in results.items():
                    print(f"  {name:11s} " + "  ".join(f"{v:,.0f}" for v in values))
                for name in [n for n in results if n != "nginx"]:
                    print("  " + median_ratio(f"{name}/nginx", results[name], results["nginx"]))
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(10)


if __name__ == "__main__":
    main()
