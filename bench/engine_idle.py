"""Memory of idle keep-alive connections: engine against nginx (not a test).

    .venv/bin/python bench/engine_idle.py [--connections 1000] [--rounds 3]

Opens N client connections to a proxy; each sends one request and reads its 1 KiB answer
(one after the other, so the upstream pool stays at one connection), then stays open and
idle. The proxy's resident memory (VmRSS) is read before and after; (after - before) / N
is the cost of one idle keep-alive connection. For nginx the one worker process is measured
(it is also the upstream, whose side is the same in both runs). Each round closes the
connections and repeats; the engine is a fresh process per round.
"""
import argparse
import gc
import os
import socket
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import HOST, Rig, rss_kib  # noqa: E402

REQUEST = f"GET /1k.bin HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()


def open_idle(port, count):
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(REQUEST)
        data = b""
        while not (b"\r\n\r\n" in data and len(data.split(b"\r\n\r\n", 1)[1]) >= 1024):
            chunk = sock.recv(65536)
            if not chunk:
                raise SystemExit(f"port {port} closed a connection")
            data += chunk
        socks.append(sock)
    return socks


def measure(pid, port, count):
    open_idle(port, 20)                          # warm the process's allocator up first
    time.sleep(0.3)
    before = rss_kib(pid)
    socks = open_idle(port, count)
    time.sleep(0.5)
    after = rss_kib(pid)
    for sock in socks:
        sock.close()
    gc.collect()
    return (after - before) / count


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results = {"nginx": [], "engine": []}
    with Rig() as rig:
        for _ in range(args.rounds):
            results["nginx"].append(measure(rig.nginx_worker, rig.nginx_port, args.connections))
            rig.restart_engine()
            results["engine"].append(measure(rig.engine.pid, rig.engine_port, args.connections))
            time.sleep(0.5)
    print(f"{args.connections} idle keep-alive connections, RSS delta per connection, {args.rounds} rounds")
    for name, values in results.items():
        print(f"{name:6s} " + "  ".join(f"{v:.1f}" for v in values) + " KiB "
              f"(median {statistics.median(values):.1f} KiB)")


if __name__ == "__main__":
    main()
