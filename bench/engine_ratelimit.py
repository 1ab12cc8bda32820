"""Cost of rate limiting and exploit blocking in the engine, on 127.0.0.1 (not a test).

    .venv/bin/python bench/engine_ratelimit.py [--rounds 5] [--duration 4] [--connections 50] [--redis URL]

Engines (`python -m proxy_engine`, one worker each) in front of nginx serving 1 KiB
(bench/common.py), measured in turn with `wrk -t1 -cN -dDs` for `--rounds` rounds:

- plain: the host with neither feature;
- ratelimit: a local limit too high to ever trigger (10^9 requests per second), every
  request decided by GCRA (one key: wrk's address);
- ratelimit+redis (with `--redis`): the same limit shared through Redis, i.e. one EVALSHA
  round trip per request while the request waits;
- exploits: block_exploits on, every request's target (with a query) and User-Agent checked;
- plain (control): a second plain engine, measured last in each round: how far two identical
  engines differ here (the noise floor).

Requests carry a query (one parameter with `%2F`, so the query regexes do run) and a browser
User-Agent. Prints
first the in-process cost of each check per request (timeit, best of 5), then requests/s per
round, the engine process's CPU time per request (from /proc, steadier than requests/s when
other work shares the cores) and the median ratio of each engine to the plain one.
"""
import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import HOST, ROOT, Rig, alternate, median_ratio, wrk_run  # noqa: E402

PATH = "/1k.bin?page=2&sort=name&select=all&q=living+room&dir=%2FPhotos%2F2024"
AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"


def wrk(port, duration, connections, pid=None):
    """(requests/s, engine CPU µs per request or None)."""
    return wrk_run(port, duration, connections, PATH, headers=[f"User-Agent: {AGENT}"], pid=pid,
                   hint=" (a limit triggered?)")


def spawn(rig, name, host_changes, *extra):
    """An engine process serving the rig's host with `host_changes` applied."""
    doc = rig.document()
    doc["proxy_hosts"][0].update(host_changes)
    proc, port = rig.engine_for(name, doc, *extra)
    return proc.pid, port


def micro(n=200_000):
    """In-process CPU time of each check per request (µs, best of 5, process time): steadier
    on a loaded machine than the throughput rounds."""
    import ipaddress
    import time
    import timeit

    sys.path.insert(0, ROOT)
    from proxy_engine.exploits import blocked
    from proxy_engine.ratelimit import Limiter, RateLimit
    from proxy_engine.snapshot import RateLimitConfig

    headers = [(b"host", b"Host", HOST.encode()), (b"user-agent", b"User-Agent", AGENT.encode()),
               (b"accept", b"Accept", b"*/*")]
    limit = RateLimit(RateLimitConfig(1_000_000_000, 1.0, 0, "ip"), "1", Limiter(), lambda a: False)
    peer = ipaddress.ip_address("127.0.0.1")
    target = PATH.encode()
    plain_query = b"/api/states?entity=sensor1&page=2"
    checks = {"exploits (query + User-Agent)": lambda: blocked(target, headers),
              "exploits (plain query)": lambda: blocked(plain_query, headers),
              "exploits (no query)": lambda: blocked(b"/1k.bin", headers),
              "rate limit (local GCRA + key)": lambda: limit.check(peer, False, headers, None)}
    for name, check in checks.items():
        best = min(timeit.repeat(check, number=n, repeat=5, timer=time.process_time)) / n * 1e6
        print(f"{name:32s} {best:.2f} µs per request")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=4)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--redis", default="", help="also measure a limit shared through this Redis URL")
    parser.add_argument("--micro-only", action="store_true", help="only the in-process cost per check")
    args = parser.parse_args()
    micro()
    if args.micro_only:
        return
    never = {"requests": 1_000_000_000, "per": 1.0, "burst": 0, "key": "ip"}
    with Rig() as rig:
        systems = {"plain": (rig.engine.pid, rig.engine_port),
                   "ratelimit": spawn(rig, "ratelimit", {"rate_limit": never})}
        if args.redis:
            systems["ratelimit+redis"] = spawn(rig, "redis", {"id": 424242, "rate_limit": never},
                                               "--redis-url", args.redis)
        systems["exploits"] = spawn(rig, "exploits", {"block_exploits": True})
        systems["plain (control)"] = spawn(rig, "control", {})    # same as plain: the noise floor
        measured = alternate(systems, args.rounds, lambda e: wrk(e[1], args.duration, args.connections, e[0]),
                             warm_up=lambda e: wrk(e[1], 1, args.connections))      # e: (pid, port)
        results = {name: [rate for rate, _ in values] for name, values in measured.items()}
        cpu = {name: [per_request for _, per_request in values] for name, values in measured.items()}
        print(f"wrk -t1 -c{args.connections} -d{args.duration}s, 1 KiB, GET {PATH}, {args.rounds} rounds alternating")
        for name, values in results.items():
            print(f"{name:16s} " + "  ".join(f"{v:,.0f}" for v in values) + " req/s")
        for name, values in cpu.items():
            print(f"{name:16s} engine CPU per request: median {statistics.median(values):.1f} µs "
                  f"({', '.join(f'{v:.1f}' for v in values)})")
        for name in results:
            if name != "plain":
                print(median_ratio(f"{name}/plain", results[name], results["plain"], digits=3, round_digits=3))


if __name__ == "__main__":
    main()
