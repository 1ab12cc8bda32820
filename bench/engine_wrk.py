"""Throughput of the engine against nginx, alternating, on 127.0.0.1 (not a test).

    .venv/bin/python bench/engine_wrk.py [--rounds 5] [--duration 4] [--connections 50] [--access-log]

nginx (Debian nginx-light) is the upstream serving 1 KiB and, with one worker and upstream
keepalive, the reverse proxy to compare with; the engine is `python -m proxy_engine` (one
worker). `wrk -t1 -cN -dDs` runs against each proxy in turn, `--rounds` times, and the
requests/s and the median ratio engine/nginx are printed. With `--access-log` a second
engine writing its access log to a file joins the rotation, and its ratio is printed too.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Rig, alternate, median_ratio, wrk  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=4)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--access-log", action="store_true",
                        help="also measure an engine writing its access log to a file")
    args = parser.parse_args()
    with Rig() as rig:
        systems = {"nginx": rig.nginx_port, "engine": rig.engine_port}
        if args.access_log:
            systems["engine+log"] = rig.spawn_engine("access.log")[1]
        results = alternate(systems, args.rounds, lambda port: wrk(port, args.duration, args.connections),
                            warm_up=lambda port: wrk(port, 1, args.connections))
        direct = wrk(rig.upstream, args.duration, args.connections)
        print(f"wrk -t1 -c{args.connections} -d{args.duration}s, 1 KiB, {args.rounds} rounds alternating")
        print(f"upstream direct: {direct:,.0f} req/s")
        for name, values in results.items():
            print(f"{name:10s} " + "  ".join(f"{v:,.0f}" for v in values) + " req/s")
        for name in results:
            if name != "nginx":
                print(median_ratio(f"{name}/nginx", results[name], results["nginx"]))
        if args.access_log:
            logs = [os.path.join(rig.tmp, n) for n in os.listdir(rig.tmp) if n.startswith("access.log")
                    and not n.endswith(".lock")]
            lines = sum(sum(1 for _ in open(path, "rb")) for path in logs)
            print(f"access log lines written: {lines:,} in {len(logs)} file(s) (rotated at 10 MiB, 5 kept)")


if __name__ == "__main__":
    main()
