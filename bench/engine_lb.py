"""Cost of load balancing in the engine, on 127.0.0.1 (not a test).

    .venv/bin/python bench/engine_lb.py [--rounds 5] [--duration 4] [--connections 50] [--before REF]

nginx (bench/common.py) serves the 1 KiB file as the upstream. Engines, one worker each,
measured in turn with `wrk -t1 -cN -dDs`, `--rounds` times:

- `before`: the engine of git ref `--before` (default `main`), extracted with `git archive`
  into the rig's temporary directory, on a host with one upstream and the default
  load balancing (plain round robin);
- `plain`: this checkout, the same document: the pick must cost what it did;
- `balanced`: this checkout, two upstream addresses for the same nginx (127.0.0.1 and
  localhost), least_conn, an active health check every second and passive checks: the
  request path through `BalancedGroup` (in-flight counting, health skipping).

Prints requests/s per round and the medians of plain/before and balanced/plain.
"""
import argparse
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import HOST, ROOT, Rig, alternate, median_ratio, wrk  # noqa: E402


def document(upstreams, **lb):
    return {"revision": 1, "settings": {"default_site": {"action": "404"}, "trusted_proxies": []},
            "proxy_hosts": [{"id": 1, "domains": [HOST], "max_body_size": None, "locations": [],
                             "upstreams": [{"scheme": "http", "host": h, "port": p, "weight": 1} for h, p in upstreams],
                             "load_balancing": {"policy": "round_robin", **lb}}]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=4)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--before", default="main", help="git ref of the 'before' engine")
    args = parser.parse_args()
    with Rig() as rig:
        before_dir = os.path.join(rig.tmp, "before")
        os.makedirs(before_dir)
        archive = subprocess.run(["git", "archive", args.before, "proxy_engine"], cwd=ROOT, capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", before_dir], input=archive, check=True)
        plain_doc = document([("127.0.0.1", rig.upstream)])
        balanced_doc = document(
            [("127.0.0.1", rig.upstream), ("localhost", rig.upstream)], policy="least_conn",
            health_check={"path": "/1k.bin", "interval": 1.0, "timeout": 1.0},
            passive={"failures": 3, "window": 10.0, "cooldown": 30.0})
        systems = {"before": rig.engine_for("before", plain_doc, cwd=before_dir)[1],
                   "plain": rig.engine_for("plain", plain_doc)[1],
                   "balanced": rig.engine_for("balanced", balanced_doc)[1]}
        results = alternate(systems, args.rounds, lambda port: wrk(port, args.duration, args.connections),
                            warm_up=lambda port: wrk(port, 1, args.connections))
        print(f"wrk -t1 -c{args.connections} -d{args.duration}s, 1 KiB, {args.rounds} rounds alternating;"
              f" before = {args.before}")
        for name, values in results.items():
            print(f"{name:9s} " + "  ".join(f"{v:,.0f}" for v in values) + f" req/s (median {statistics.median(values):,.0f})")
        for a, b in (("plain", "before"), ("balanced", "plain")):
            print(median_ratio(f"{a}/{b}", results[a], results[b], digits=3))


if __name__ == "__main__":
    main()
