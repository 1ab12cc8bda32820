"""A 100 MiB body streamed through the engine and through nginx, both ways (not a test).

    .venv/bin/python bench/engine_stream.py [--rounds 3]

nginx serves a 100 MiB file and sinks uploads (`return 204` after reading the body); curl
downloads it and uploads (PUT) a 100 MiB file through nginx (proxy_buffering and
proxy_request_buffering off, so both proxies stream) and through a fresh engine process,
alternating. Prints MiB/s, the median ratio engine/nginx, and the engine's resident memory
before and at its peak (VmHWM), which must stay flat however large the body.
"""
import argparse
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import HOST, Rig, rss_kib  # noqa: E402


SIZE = 100 << 20


def curl(args, kind):
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", f"%{{http_code}} %{{size_{kind}}} %{{speed_{kind}}}",
                          "-H", f"Host: {HOST}", *args], capture_output=True, text=True, check=True).stdout
    code, size, speed = out.split()
    if code not in ("200", "204") or int(size) != SIZE:
        raise SystemExit(f"curl {args}: HTTP {code}, {size} bytes")
    return float(speed) / (1 << 20)


def download(port):
    return curl([f"http://127.0.0.1:{port}/big/100m.bin"], "download")


def upload(port, path):
    return curl(["-T", path, f"http://127.0.0.1:{port}/upload"], "upload")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with Rig(big_file=True) as rig:
        body = os.path.join(rig.tmp, "www", "big", "100m.bin")
        before = rss_kib(rig.engine.pid)
        results = {(kind, name): [] for kind in ("download", "upload") for name in ("nginx", "engine")}
        for _ in range(args.rounds):
            for name, port in (("nginx", rig.nginx_port), ("engine", rig.engine_port)):
                results["download", name].append(download(port))
                results["upload", name].append(upload(port, body))
        peak = rss_kib(rig.engine.pid, "VmHWM")
        print(f"100 MiB body, curl, {args.rounds} rounds alternating")
        for kind in ("download", "upload"):
            for name in ("nginx", "engine"):
                print(f"{kind:8s} {name:6s} " + "  ".join(f"{v:,.0f}" for v in results[kind, name]) + " MiB/s")
            ratios = [e / n for e, n in zip(results[kind, "engine"], results[kind, "nginx"])]
            print(f"{kind:8s} median ratio engine/nginx: {statistics.median(ratios):.2f}")
        print(f"engine RSS before: {before / 1024:.1f} MiB, peak (VmHWM) after {2 * args.rounds} transfers "
              f"of 100 MiB: {peak / 1024:.1f} MiB")


if __name__ == "__main__":
    main()
