"""Time from a committed change to the engine answering with it (not a test).

    .venv/bin/python bench/reload_latency.py [--changes 200] [--poll-changes 15] [--extra-hosts 50]

Builds a fresh SQLite database in a temporary data directory, starts a private
redis-server, two upstreams (a, b) and `manage.py runproxy` (one worker), then flips a
proxy host between the two upstreams through the ORM. Each sample runs from just before
`save()` (which commits) until the first GET through the engine that the new upstream
answers. Mode "redis": pushed by Redis (the 2 s poll still runs). Mode "poll": REDIS_URL
empty, the engine finds the change by polling every 2 s. Prints p50/p90/p99/max.
"""
import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def percentile(samples, fraction):
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def answered_by(port, name, conn):
    try:
        conn.request("GET", "/", headers={"Host": "app.example.test"})
        response = conn.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException):
        conn.close()
        return False
    return body.startswith(b"{") and json.loads(body)["server"] == name


def measure(proxy, host, upstreams, changes):
    from manager.hosts.models import ProxyHost  # noqa: F401 (Django is set up by main)

    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    samples = []
    for i in range(changes):
        name = "b" if i % 2 == 0 else "a"
        host.upstreams = [{"scheme": "http", "host": "127.0.0.1", "port": upstreams[name].server_address[1], "weight": 1}]
        started = time.perf_counter()
        host.save()
        while not answered_by(proxy.port, name, conn):
            if time.perf_counter() - started > 30:
                raise SystemExit(f"change {i} never reached the engine")
            time.sleep(0.001)
        samples.append((time.perf_counter() - started) * 1000)
    conn.close()
    return samples


def report(mode, samples):
    print(f"{mode:6} n={len(samples):4}  p50={statistics.median(samples):8.1f} ms  p90={percentile(samples, .9):8.1f} ms"
          f"  p99={percentile(samples, .99):8.1f} ms  max={max(samples):8.1f} ms")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--poll-changes", type=int, default=15)
    parser.add_argument("--extra-hosts", type=int, default=50, help="other enabled hosts in every snapshot")
    args = parser.parse_args()

    data_dir = tempfile.mkdtemp(prefix="gatehouse-bench-")
    database = os.path.join(data_dir, "gatehouse.sqlite3")
    from tests.live import RedisServer, runproxy, start_upstream, stop_upstream

    redis_server = RedisServer(data_dir).start()
    os.environ.update(GATEHOUSE_DATA_DIR=data_dir, DATABASE_URL=f"sqlite:///{database}",
                      REDIS_URL=redis_server.url, DJANGO_SETTINGS_MODULE="manager.settings")
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, check=True)
    import django

    django.setup()
    from django.test import override_settings

    from manager.hosts.models import ProxyHost

    upstream = [{"scheme": "http", "host": "127.0.0.1", "port": 9, "weight": 1}]
    for i in range(args.extra_hosts):
        ProxyHost.objects.create(domains=[f"svc{i}.example.test"], upstreams=upstream)
    upstreams = {name: start_upstream(name) for name in ("a", "b")}
    host = ProxyHost.objects.create(domains=["app.example.test"], upstreams=upstream)
    print(f"{args.extra_hosts + 1} proxy hosts in the database; engine: manage.py runproxy --workers 1")
    try:
        for mode, redis_url, changes in (("redis", redis_server.url, args.changes), ("poll", "", args.poll_changes)):
            proxy = runproxy(database, data_dir, redis_url=redis_url)
            try:
                with override_settings(REDIS_URL=redis_url):
                    report(mode, measure(proxy, host, upstreams, changes))
            finally:
                proxy.stop()
    finally:
        for server in upstreams.values():
            stop_upstream(server)
        redis_server.stop()


if __name__ == "__main__":
    main()
