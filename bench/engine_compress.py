"""The cost of response compression in the engine, on 127.0.0.1 (not a test).

    .venv/bin/python bench/engine_compress.py [--rounds 3] [--duration 4] [--connections 20] [--size 16384]

Part 1, the encoders alone: MB/s of input and the compressed size of a `--size` text body
(JSON lines, like an API answer or a page) at the levels the engine uses and their
neighbours, one response at a time as the engine does (a fresh encoder per body).

Part 2, through the engine (`python -m proxy_engine`, one worker) with nginx (nginx-light)
as the upstream serving that body as text/plain: one engine, two hosts on the same
upstream, `plain.example.test` without compression and `app.example.test` with
["gzip", "br", "zstd"]. `wrk -t1 -cN -dDs` runs, alternating, `--rounds` times against:
the plain host (the baseline), the compressing host with a client sending no
Accept-Encoding (negotiation and Vary only), and the compressing host asking for gzip, br
and zstd. For comparison, a second nginx with `gzip on; gzip_comp_level 5` in front of the
same upstream, with and without Accept-Encoding. Medians are printed, with each engine
row as a ratio of the engine's plain route.
"""
import argparse
import gzip
import json
import os
import statistics
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import KEEPALIVE, NGINX_HEAD, Rig, alternate, free_port, start_nginx, wait_port, wrk_run  # noqa: E402

from proxy_engine.compress import LEVELS, encoder  # noqa: E402

NGINX_GZIP = NGINX_HEAD + KEEPALIVE + """  upstream app {{ server 127.0.0.1:{upstream}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    gzip on; gzip_comp_level 5; gzip_min_length 1024; gzip_proxied any; gzip_vary on;
    gzip_types text/plain application/json;
    location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";
                 proxy_set_header Host $host; }}
  }}
}}
"""


def body_text(size):
    lines = []
    total = 0
    i = 0
    while total < size:
        line = json.dumps({"id": i, "name": f"item-{i * 2654435761 % 4294967296:x}", "ok": i % 3 != 0,
                           "tags": ["alpha", "beta"][: i % 3]}).encode() + b"\n"
        lines.append(line)
        total += len(line)
        i += 1
    return b"".join(lines)[:size]


def encoder_table(body, seconds=1.0):
    import brotli
    import zlib

    import zstandard
    rows = []
    cases = [("gzip", 1), ("gzip", 5), ("gzip", 6), ("gzip", 9), ("br", 1), ("br", 4), ("br", 5), ("br", 6),
             ("zstd", 1), ("zstd", 3), ("zstd", 6)]
    for name, level in cases:
        if name == "gzip":
            def run():
                c = zlib.compressobj(level, zlib.DEFLATED, 31)
                return c.compress(body) + c.flush()
        elif name == "br":
            def run():
                c = brotli.Compressor(quality=level)
                return c.process(body) + c.finish()
        else:
            def run():
                c = zstandard.ZstdCompressor(level=level).compressobj()
                return c.compress(body) + c.flush()
        size = len(run())
        count = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            run()
            count += 1
        elapsed = time.perf_counter() - start
        rows.append((name, level, size, count * len(body) / elapsed / 1e6, count / elapsed))
    return rows


def wrk(port, host, duration, connections, path, accept=None, pid=None):
    """(requests/s, CPU microseconds per request of `pid`'s process tree or None)."""
    return wrk_run(port, duration, connections, path, host=host,
                   headers=[f"Accept-Encoding: {accept}"] if accept else (), pid=pid)


def fetch(port, host, path, accept=None):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Host": host})
    if accept:
        request.add_header("Accept-Encoding", accept)
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.headers.get("Content-Encoding"), response.read()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=4)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--size", type=int, default=16384)
    args = parser.parse_args()
    body = body_text(args.size)

    print(f"Encoders alone, one {len(body):,}-byte JSON-lines body per call (engine levels: {LEVELS}):")
    print(f"{'encoding':9s}{'level':>6s}{'bytes':>9s}{'ratio':>8s}{'MB/s in':>10s}{'bodies/s':>10s}")
    for name, level, size, mbps, per_second in encoder_table(body):
        mark = " <- engine" if LEVELS[name] == level else ""
        print(f"{name:9s}{level:6d}{size:9,d}{len(body) / size:8.1f}{mbps:10.1f}{per_second:10,.0f}{mark}")

    with Rig() as rig:
        with open(f"{rig.tmp}/www/page.txt", "wb") as handle:
            handle.write(body)
        upstream = {"scheme": "http", "host": "127.0.0.1", "port": rig.upstream, "weight": 1}
        doc = {"revision": 2, "settings": {"default_site": {"action": "404"}, "trusted_proxies": []},
               "proxy_hosts": [
                   {"id": 1, "domains": ["app.example.test"], "upstreams": [upstream], "max_body_size": None,
                    "compression": ["gzip", "br", "zstd"], "locations": []},
                   {"id": 2, "domains": ["plain.example.test"], "upstreams": [upstream], "max_body_size": None,
                    "locations": []}]}
        with open(f"{rig.tmp}/snapshot.json.tmp", "w") as handle:
            json.dump(doc, handle)
        os.replace(f"{rig.tmp}/snapshot.json.tmp", f"{rig.tmp}/snapshot.json")
        port = rig.engine_port
        deadline = time.time() + 15
        while fetch(port, "app.example.test", "/page.txt", "gzip")[0] != "gzip":
            if time.time() > deadline:
                raise SystemExit("the engine never served the compressing snapshot")
            time.sleep(0.3)
        for accept in ("gzip", "br", "zstd"):
            encoding, data = fetch(port, "app.example.test", "/page.txt", accept)
            assert encoding == accept, (accept, encoding)
        assert fetch(port, "plain.example.test", "/page.txt", "gzip") == (None, body)

        gzip_port = free_port()
        nginx_gzip = start_nginx(rig.tmp, "-gzip", NGINX_GZIP.format(tmp=rig.tmp, name="-gzip", upstream=rig.upstream,
                                                                     port=gzip_port))
        try:
            wait_port(gzip_port)
            encoding, data = fetch(gzip_port, "app.example.test", "/page.txt", "gzip")
            assert encoding == "gzip" and gzip.decompress(data) == body
            engine_pid, nginx_pid = rig.engine.pid, nginx_gzip.pid
            systems = {
                "engine plain route": (port, "plain.example.test", "gzip, br, zstd", engine_pid),
                "engine compress route, no Accept-Encoding": (port, "app.example.test", None, engine_pid),
                "engine compress route, gzip": (port, "app.example.test", "gzip", engine_pid),
                "engine compress route, br": (port, "app.example.test", "br", engine_pid),
                "engine compress route, zstd": (port, "app.example.test", "zstd", engine_pid),
                "nginx proxy, no Accept-Encoding": (gzip_port, "app.example.test", None, nginx_pid),
                "nginx proxy gzip 5": (gzip_port, "app.example.test", "gzip", nginx_pid),
            }
            results = alternate(      # s: (port, host, accept, pid)
                systems, args.rounds,
                lambda s: wrk(s[0], s[1], args.duration, args.connections, "/page.txt", s[2], s[3]),
                warm_up=lambda s: wrk(s[0], s[1], 1, args.connections, "/page.txt", s[2]))
        finally:
            nginx_gzip.terminate()
            nginx_gzip.wait()
        print(f"\nwrk -t1 -c{args.connections} -d{args.duration}s, {len(body):,}-byte text/plain body, "
              f"{args.rounds} rounds alternating; medians, then per round. CPU = user+system time of the "
              f"proxy's processes per request (steadier than req/s on shared cores)")
        base = statistics.median(r for r, _ in results["engine plain route"])
        base_cpu = statistics.median(c for _, c in results["engine plain route"])
        for name, values in results.items():
            rate = statistics.median(r for r, _ in values)
            cpu = statistics.median(c for _, c in values)
            ratio = (f" x{rate / base:.2f} req/s, +{cpu - base_cpu:,.0f} us CPU vs plain route"
                     if name.startswith("engine") and name != "engine plain route" else "")
            print(f"{name:44s}{rate:8,.0f} req/s {cpu:6,.0f} us CPU/req{ratio}   "
                  f"({', '.join(f'{r:,.0f}' for r, _ in values)})")


if __name__ == "__main__":
    main()
