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
import os
import sys
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import HOST, Rig, alternate, median_ratio, wrk  # noqa: E402


def spawn_cached_engine(rig):
    doc = rig.document()
    doc["proxy_hosts"][0]["cache"] = {"enabled": True, "default_ttl": 600.0, "stale_if_error": 0.0}
    doc["settings"]["cache"] = {"memory_bytes": 64 << 20, "disk_bytes": 0}
    return rig.engine_for("snapshot-cache", doc)[1]


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
        results = alternate(systems, args.rounds, lambda port: wrk(port, args.duration, args.connections),
                            warm_up=lambda port: wrk(port, 1, args.connections))
        print(f"wrk -t1 -c{args.connections} -d{args.duration}s, 1 KiB, {args.rounds} rounds alternating")
        for name, values in results.items():
            print(f"{name:18s} " + "  ".join(f"{v:,.0f}" for v in values) + " req/s")
        base = results["nginx (no cache)"]
        for name in list(results)[1:]:
            print(median_ratio(f"{name} / nginx (no cache)", results[name], base))


if __name__ == "__main__":
    main()
