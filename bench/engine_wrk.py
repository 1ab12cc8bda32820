"""Throughput of the engine against nginx, alternating, on 127.0.0.1 (not a test).

    .venv/bin/python bench/engine_wrk.py [--rounds 3] [--duration 5] [--connections 50]

Starts nginx (Debian nginx-light) as the upstream serving 1 KiB, nginx as a reverse proxy
with upstream keepalive (one worker), and the engine (`python -m proxy_engine`, one worker),
then runs `wrk -t1 -cN -dDs` against each proxy in turn and prints requests/s and the median
ratio engine/nginx.
"""
import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
  keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{upstream}; location / {{ root {tmp}/www; }} }}
  upstream app {{ server 127.0.0.1:{upstream}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{proxy};
    location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";
                 proxy_set_header Host $host; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; }}
  }}
}}
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"port {port} never opened")


def wrk(port, duration, connections):
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "-H", "Host: app.example.test",
         f"http://127.0.0.1:{port}/1k.bin"], capture_output=True, text=True, check=True).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise SystemExit(f"non-2xx answers on port {port}:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=50)
    args = parser.parse_args()
    for tool in ("nginx", "wrk"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            raise SystemExit(f"{tool} is not installed (apt-get install -y nginx-light wrk)")
    tmp = tempfile.mkdtemp(prefix="gatehouse-bench-")
    os.chmod(tmp, 0o755)
    os.makedirs(f"{tmp}/www")
    with open(f"{tmp}/www/1k.bin", "wb") as handle:
        handle.write(b"x" * 1024)
    upstream, nginx_proxy, engine_port = free_port(), free_port(), free_port()
    with open(f"{tmp}/nginx.conf", "w") as handle:
        handle.write(NGINX_CONF.format(tmp=tmp, upstream=upstream, proxy=nginx_proxy))
    doc = {"revision": 1, "settings": {"default_site": {"action": "404"}, "trusted_proxies": []},
           "proxy_hosts": [{"id": 1, "domains": ["app.example.test"],
                            "upstreams": [{"scheme": "http", "host": "127.0.0.1", "port": upstream, "weight": 1}]}]}
    with open(f"{tmp}/snapshot.json", "w") as handle:
        json.dump(doc, handle)
    nginx = subprocess.Popen([shutil.which("nginx") or "/usr/sbin/nginx", "-c", f"{tmp}/nginx.conf", "-p", tmp])
    engine = subprocess.Popen([sys.executable, "-m", "proxy_engine", "--document-file", f"{tmp}/snapshot.json",
                               "--http-port", str(engine_port), "--log-level", "ERROR"], cwd=ROOT)
    try:
        for port in (upstream, nginx_proxy, engine_port):
            wait_port(port)
        time.sleep(0.5)
        wrk(engine_port, 1, args.connections)           # warm up both
        wrk(nginx_proxy, 1, args.connections)
        results = {"nginx": [], "engine": []}
        for _ in range(args.rounds):
            results["nginx"].append(wrk(nginx_proxy, args.duration, args.connections))
            results["engine"].append(wrk(engine_port, args.duration, args.connections))
        ratios = [e / n for e, n in zip(results["engine"], results["nginx"])]
        direct = wrk(upstream, args.duration, args.connections)
        print(f"upstream direct: {direct:,.0f} req/s")
        for name, values in results.items():
            print(f"{name:7s} " + "  ".join(f"{v:,.0f}" for v in values) + " req/s")
        print(f"median ratio engine/nginx: {statistics.median(ratios):.2f}")
    finally:
        engine.terminate()
        nginx.terminate()
        engine.wait()
        nginx.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
