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
import re
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import HOST, Rig  # noqa: E402


def wrk(port, duration, connections, path="/1k.bin"):
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "-H", f"Host: {HOST}",
         f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, check=True).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise SystemExit(f"non-2xx answers on port {port}:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


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
        for port in systems.values():
            wrk(port, 1, args.connections)                  # warm up
        results = {name: [] for name in systems}
        for _ in range(args.rounds):
            for name, port in systems.items():
                results[name].append(wrk(port, args.duration, args.connections))
        direct = wrk(rig.upstream, args.duration, args.connections)
        print(f"wrk -t1 -c{args.connections} -d{args.duration}s, 1 KiB, {args.rounds} rounds alternating")
        print(f"upstream direct: {direct:,.0f} req/s")
        for name, values in results.items():
            print(f"{name:10s} " + "  ".join(f"{v:,.0f}" for v in values) + " req/s")
        for name in results:
            if name != "nginx":
                ratios = [e / n for e, n in zip(results[name], results["nginx"])]
                print(f"median ratio {name}/nginx: {statistics.median(ratios):.2f} "
                      f"(per round: {', '.join(f'{r:.2f}' for r in ratios)})")
        if args.access_log:
            logs = [os.path.join(rig.tmp, n) for n in os.listdir(rig.tmp) if n.startswith("access.log")
                    and not n.endswith(".lock")]
            lines = sum(sum(1 for _ in open(path, "rb")) for path in logs)
            print(f"access log lines written: {lines:,} in {len(logs)} file(s) (rotated at 10 MiB, 5 kept)")


if __name__ == "__main__":
    main()
