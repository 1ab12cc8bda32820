"""Latency the engine adds at a fixed moderate rate, against nginx, alternating (not a test).

    .venv/bin/python bench/engine_latency.py [--rate 1000] [--duration 5] [--rounds 3]

Debian has no constant-rate HTTP load tool (no wrk2, no vegeta), so the client is here: one
Python thread, `selectors` over a pool of keep-alive connections, open loop. Request i is
due at t0 + i/rate whatever happened before; its latency runs from that due time (not from
when it could actually be sent) to the last byte of the answer, so a stall shows up in the
figures instead of silently lowering the rate (no coordinated omission). The same client
hits the upstream directly, nginx and the engine in turn; "added" is the proxy's percentile
minus the direct one in the same round, which also cancels the client's own overhead.
"""
import argparse
import os
import selectors
import socket
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import HOST, Rig  # noqa: E402

REQUEST = f"GET /1k.bin HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()


class Conn:
    __slots__ = ("sock", "due", "buf", "need")

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.due = None
        self.buf = b""
        self.need = None


def run_fixed_rate(port, rate, duration, connections=32):
    """Latencies (seconds) of rate*duration requests sent at a fixed rate."""
    sel = selectors.DefaultSelector()
    idle = [Conn(port) for _ in range(connections)]
    for conn in idle:
        sel.register(conn.sock, selectors.EVENT_READ, conn)
    total = int(rate * duration)
    latencies = []
    backlog = []                       # due times waiting for a free connection
    start = time.perf_counter() + 0.05
    sent = 0
    while len(latencies) < total:
        now = time.perf_counter()
        while sent < total and start + sent / rate <= now:
            backlog.append(start + sent / rate)
            sent += 1
        while backlog and idle:
            conn = idle.pop()
            conn.due = backlog.pop(0)
            conn.buf, conn.need = b"", None
            conn.sock.send(REQUEST)
        next_due = start + sent / rate if sent < total else now + 1.0
        for key, _ in sel.select(max(0.0, next_due - time.perf_counter())):
            conn = key.data
            data = conn.sock.recv(65536)
            if not data:
                raise SystemExit(f"port {port} closed a connection")
            conn.buf += data
            if conn.need is None:
                end = conn.buf.find(b"\r\n\r\n")
                if end < 0:
                    continue
                head = conn.buf[:end].lower()
                length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
                conn.need = end + 4 + length
            if len(conn.buf) >= conn.need:
                latencies.append(time.perf_counter() - conn.due)
                idle.append(conn)
    for conn in idle:
        conn.sock.close()
    sel.close()
    return latencies


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100.0 * (len(values) - 1))))]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with Rig() as rig:
        systems = {"direct": rig.upstream, "nginx": rig.nginx_port, "engine": rig.engine_port}
        for port in systems.values():
            run_fixed_rate(port, args.rate, 0.5)           # warm up
        added = {"nginx": {50: [], 99: []}, "engine": {50: [], 99: []}}
        print(f"fixed rate {args.rate} req/s for {args.duration:g}s per system, 1 KiB, {args.rounds} rounds")
        for round_ in range(args.rounds):
            figures = {}
            for name, port in systems.items():
                lat = run_fixed_rate(port, args.rate, args.duration)
                figures[name] = {p: percentile(lat, p) * 1000 for p in (50, 99)}
            for name in ("nginx", "engine"):
                for p in (50, 99):
                    added[name][p].append(figures[name][p] - figures["direct"][p])
            print(f"round {round_ + 1}: " + "  ".join(
                f"{name} p50 {f[50]:.3f} ms p99 {f[99]:.3f} ms" for name, f in figures.items()))
        for name in ("nginx", "engine"):
            print(f"added by {name:6s} (median of rounds): p50 {statistics.median(added[name][50]):.3f} ms, "
                  f"p99 {statistics.median(added[name][99]):.3f} ms")


if __name__ == "__main__":
    main()
