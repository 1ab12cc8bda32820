"""Cache hits through the engine against nginx proxying WITHOUT a cache (not a test).

    .venv/bin/python bench/engine_cache.py [--rounds 5] [--duration 4] [--connections 50]

The rig of `bench/common.py` (nginx as the upstream serving 1 KiB and as a keep-alive reverse
proxy without cache; one engine worker without cache) plus a second engine whose host has the
cache on (`default_ttl` 600 s: nginx's static file carries no Cache-Control, so the default
applies). After one warm-up request every request to that engine is a HIT. `wrk -t1 -cN -dDs`
runs against nginx, the engine without cache and the engine with cache in turn, `--rounds`
times; the medians of the per-round ratios against nginx are printed.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import HOST, ROOT, Rig, free_port, wait_port  # noqa: E402
from engine_wrk import wrk  # noqa: E402


def spawn_cached_engine(rig):
    with open(f"{rig.tmp}/snapshot.json") as handle:
        doc = json.load(handle)
    doc["proxy_hosts"][0]["cache"] = {"enabled": True, "default_ttl": 600.0, "stale_if_error": 0.0}
    doc["settings"]["cache"] = {"memory_bytes": 64 << 20, "disk_bytes": 0}
    path = f"{rig.tmp}/snapshot-cache.json"
    with open(path, "w") as handle:
        json.dump(doc, handle)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "proxy_engine", "--document-file", path, "--http-port", str(port),
                             "--log-level", "ERROR"], cwd=ROOT)
    rig.engines.append(proc)
    wait_port(port)
    return port


def cache_status(port):
    request = urllib.request.Request(f"http://127.0.0.1:{port}/1k.bin", headers={"Host": HOST})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.headers.get("X-Cache-Status")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=4)
    parser.add_argument("--connections", type=int, default=50)
    args = parser.parse_args()
    with Rig() as rig:
        cached = spawn_cached_engine(rig)
        import time
        deadline = time.time() + 10
        while True:
            try:
                first = cache_status(cached)
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.1)
        second = cache_status(cached)
        if second != "HIT":
            raise SystemExit(f"the cached engine answers {first!r} then {second!r}, not HIT")
        systems = {"nginx (no cache)": rig.nginx_port, "engine (no cache)": rig.engine_port,
                   "engine cache HIT": cached}
        for port in systems.values():
            wrk(port, 1, args.connections)                  # warm up
        results = {name: [] for name in systems}
        for _ in range(args.rounds):
            for name, port in systems.items():
                results[name].append(wrk(port, args.duration, args.connections))
        print(f"wrk -t1 -c{args.connections} -d{args.duration}s, 1 KiB, {args.rounds} rounds alternating")
        for name, values in results.items():
            print(f"{name:18s} " + "  ".join(f"{v:,.0f}" for v in values) + " req/s")
        base = results["nginx (no cache)"]
        for name in list(results)[1:]:
            ratios = [e / n for e, n in zip(results[name], base)]
            print(f"median ratio {name} / nginx (no cache): {statistics.median(ratios):.2f} "
                  f"(per round: {', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    main()
