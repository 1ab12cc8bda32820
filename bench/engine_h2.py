"""HTTP/2 requests/s with h2load: the engine's H2Protocol against nginx's http2, both over
cleartext HTTP/2 with prior knowledge (h2c), in front of the same nginx upstream (1 KiB file).

    .venv/bin/python bench/engine_h2.py [--rounds 3] [-n 20000] [-c 20] [-m 10]

The engine side is one worker running `proxy_engine.h2protocol.H2Factory` on a plain port
(the HTTPS listener selects the same protocol by ALPN; this measures HTTP/2 without TLS).
Needs nginx and h2load (apt-get install -y nginx-light nghttp2-client). Not a test.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import HOST, NGINX_HEAD, ROOT, Rig, free_port, start_nginx, wait_port  # noqa: E402

NGINX_H2 = NGINX_HEAD + """  upstream app {{ server 127.0.0.1:{upstream}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port} http2;
    location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";
                 proxy_set_header Host $host; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; }}
  }}
}}
"""


def serve(document_file, port):
    """The engine process: one reactor, the h2c factory on `port` (run with --serve)."""
    from proxy_engine.reactor import install

    reactor = install()
    from proxy_engine.h2protocol import H2Factory
    from proxy_engine.protocol import ProxyFactory
    from proxy_engine.snapshot import parse_snapshot

    factory = ProxyFactory(reactor)
    with open(document_file, encoding="utf-8") as handle:
        factory.swap(parse_snapshot(json.load(handle)))
    reactor.listenTCP(port, H2Factory(factory), interface="127.0.0.1", backlog=1024)
    reactor.run()


def h2load(port, requests, clients, streams):
    out = subprocess.run(
        ["h2load", "-n", str(requests), "-c", str(clients), "-m", str(streams),
         "-H", f":authority: {HOST}", f"http://127.0.0.1:{port}/1k.bin"],
        capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out).group(1))
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    statuses = re.search(r"status codes: (\d+) 2xx", out)
    if int(done.group(2)) != requests or int(statuses.group(1)) != requests:
        raise SystemExit(f"h2load: not every request succeeded:\n{out}")
    return rps


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("-n", type=int, default=20000)
    parser.add_argument("-c", type=int, default=20)
    parser.add_argument("-m", type=int, default=10)
    parser.add_argument("--serve", nargs=2, metavar=("DOCUMENT", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]))
        return
    if not shutil.which("h2load"):
        raise SystemExit("h2load is not installed (apt-get install -y nghttp2-client)")
    with Rig() as rig:
        nginx_port, engine_port = free_port(), free_port()
        nginx = start_nginx(rig.tmp, "-h2", NGINX_H2.format(tmp=rig.tmp, name="-h2", upstream=rig.upstream,
                                                            port=nginx_port))
        engine = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve",
                                   f"{rig.tmp}/snapshot.json", str(engine_port)], cwd=ROOT)
        try:
            wait_port(nginx_port)
            wait_port(engine_port)
            h2load(engine_port, 2000, args.c, args.m)          # warm up both
            h2load(nginx_port, 2000, args.c, args.m)
            rows = []
            for _ in range(args.rounds):
                rows.append((h2load(nginx_port, args.n, args.c, args.m), h2load(engine_port, args.n, args.c, args.m)))
        finally:
            for proc in (engine, nginx):
                proc.terminate()
            for proc in (engine, nginx):
                proc.wait()
    print(f"h2load -n {args.n} -c {args.c} -m {args.m}, h2c, 1 KiB file through the proxy")
    for nginx_rps, engine_rps in rows:
        print(f"nginx {nginx_rps:,.0f} req/s   engine {engine_rps:,.0f} req/s   ratio {engine_rps / nginx_rps:.2f}")
    ratios = sorted(e / n for n, e in rows)
    print(f"median ratio {ratios[len(ratios) // 2]:.2f}")


if __name__ == "__main__":
    main()
