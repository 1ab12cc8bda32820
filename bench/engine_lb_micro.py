"""CPU cost per proxied request through the HTTP/1.1 protocol on memory transports (not a test).

    .venv/bin/python bench/engine_lb_micro.py [--before main] [--rounds 7] [--requests 20000]

Less sensitive to a busy machine than wrk: each variant runs in its own process, drives
`ProxyProtocol` with `StringTransport`s (a keep-alive client, one pooled upstream
connection answering 1 KiB) and reports the process CPU time per request. Variants: the
engine of `--before` (git archive), this checkout with plain round robin (must cost the
same), and this checkout with least_conn + passive checks (the BalancedGroup path).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DRIVER = r"""
import json, sys, time
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.internet.address import IPv4Address
from proxy_engine.protocol import ProxyFactory
from proxy_engine.snapshot import parse_snapshot
doc = json.loads(sys.argv[1]); n = int(sys.argv[2])
reactor = MemoryReactorClock()
factory = ProxyFactory(reactor)
factory.swap(parse_snapshot(doc))
client = factory.buildProtocol(None)
ct = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 40000))
client.makeConnection(ct)
request = b"GET /1k.bin HTTP/1.1\r\nHost: app.example.test\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"
response = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 1024\r\n\r\n" + b"x" * 1024
client.dataReceived(request)
attempt = reactor.tcpClients[-1][2]
up = attempt.buildProtocol(None); ut = StringTransport(); up.makeConnection(ut)
up.dataReceived(response)
def run(count):
    for _ in range(count):
        ct.clear(); ut.clear()
        client.dataReceived(request)
        up.dataReceived(response)
run(2000)
assert ct.value().endswith(b"x" * 16), ct.value()[:200]
start = time.process_time(); run(n); used = time.process_time() - start
print(used / n * 1e6)
"""


def document(upstreams, **lb):
    return {"revision": 1, "settings": {"default_site": {"action": "404"}, "trusted_proxies": []},
            "proxy_hosts": [{"id": 1, "domains": ["app.example.test"], "max_body_size": None, "locations": [],
                             "upstreams": [{"scheme": "http", "host": h, "port": 80, "weight": 1} for h in upstreams],
                             "load_balancing": {"policy": "round_robin", **lb}}]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", default="main")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=20000)
    args = parser.parse_args()
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "archive", args.before, "proxy_engine"], cwd=ROOT, capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        plain = document(["10.0.0.1"])
        variants = {"before": (tmp, plain), "plain": (ROOT, plain),
                    "balanced": (ROOT, document(["10.0.0.1"], policy="least_conn",
                                                passive={"failures": 3, "window": 10.0, "cooldown": 30.0}))}
        results = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, (cwd, doc) in variants.items():
                out = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(doc), str(args.requests)], cwd=cwd,
                                     capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": cwd})
                results[name].append(float(out.stdout.strip()))
        print(f"CPU µs per proxied request (memory transports), {args.rounds} rounds x {args.requests};"
              f" before = {args.before}")
        for name, values in results.items():
            print(f"{name:9s} median {statistics.median(values):.2f} µs  (" + ", ".join(f"{v:.2f}" for v in values) + ")")
        for a, b in (("plain", "before"), ("balanced", "plain")):
            ratios = [x / y for x, y in zip(results[a], results[b])]
            print(f"median ratio {a}/{b}: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
