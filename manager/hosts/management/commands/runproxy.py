"""`manage.py runproxy`: run the proxy engine on the manager's snapshot.

Thin wiring: the engine (`proxy_engine.server.run`) is Django-free; this command hands it
`build_snapshot`, `current_revision` and `UpstreamError.record` (the writer of the engine's
upstream error records) wrapped so that Django database connections are only opened, used
and closed in the engine's worker threads, never on the reactor thread. Each worker reports its
status (served revision, last load/parse error) to `hosts.EngineNode` under the name
"<host name>:<pid>" the same way, and its per-host request/error counts every
`--traffic-interval` seconds to `hosts.HostTraffic`.
"""
import os
import socket

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import close_old_connections, connections

from proxy_engine.server import run


def in_worker_thread(function):
    """Wrap a blocking ORM call like a request: stale connections closed before and after."""
    def call(*args):
        close_old_connections()
        try:
            return function(*args)
        finally:
            close_old_connections()
    return call


def report_status(revision, error, hosts=(), health=None):
    """The engine's `on_status` hook (in a thread of the worker reporting). `health` is the
    worker's upstream states ({host id: {"host:port": {state, since, reason}}}) or None when
    the report carries none (the stored states are then kept)."""
    from manager.hosts.models import EngineNode

    EngineNode.report(f"{socket.gethostname()}:{os.getpid()}", revision, error, hosts, health=health)


def forget_worker():
    """The engine's `on_exit` hook: a worker that stopped cleanly removes its status row (so
    the dashboard does not wait for it to count as gone)."""
    from manager.hosts.models import EngineNode

    EngineNode.objects.filter(name=f"{socket.gethostname()}:{os.getpid()}").delete()


def record_traffic(bucket_start, counts):
    """The engine's `on_traffic` hook (in a thread of the worker counting)."""
    from manager.hosts.models import HostTraffic

    HostTraffic.record(f"{socket.gethostname()}:{os.getpid()}", bucket_start, counts)


class Command(BaseCommand):
    help = "Run the Gatehouse proxy engine (HTTP reverse proxy with live reload)."

    def add_arguments(self, parser):
        parser.add_argument("--http-port", type=int, default=settings.HTTP_PORT)
        parser.add_argument("--https-port", type=int, default=settings.HTTPS_PORT,
                            help="HTTPS port (certificates by SNI from the database); 0 = no HTTPS")
        parser.add_argument("--bind", default="0.0.0.0",
                            help="address(es) to listen on, comma-separated; '::' is dual-stack")
        parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                            help="reactor processes sharing the port with SO_REUSEPORT (default: cores)")
        parser.add_argument("--poll-interval", type=float, default=2.0,
                            help="seconds between revision polls (the fallback when Redis is absent)")
        parser.add_argument("--access-log", default=str(settings.DATA_DIR / "logs" / "access.log"),
                            help='access log file (JSON lines, rotated at 10 MiB x 5; default: '
                                 '$GATEHOUSE_DATA_DIR/logs/access.log), "-" for stdout, or "off"')
        parser.add_argument("--cache-dir", default=str(settings.DATA_DIR / "cache"),
                            help="directory of the response cache's disk tier (default: $GATEHOUSE_DATA_DIR/cache; "
                                 "used only when the cache settings give it bytes; cleared on restart)")
        parser.add_argument("--traffic-interval", type=float, default=10.0,
                            help="seconds per bucket of the per-host request/error counts (default 10)")

    def handle(self, *args, **options):
        from manager.hosts.models import UpstreamError
        from manager.hosts.snapshot import build_snapshot, current_revision

        connections.close_all()          # nothing inherited by forked workers or the reactor thread
        return_code = run(
            http_port=options["http_port"],
            https_port=options["https_port"],
            bind=options["bind"],
            workers=options["workers"],
            load_document=in_worker_thread(build_snapshot),
            current_revision=in_worker_thread(current_revision),
            redis_url=settings.REDIS_URL or None,
            poll_interval=options["poll_interval"],
            before_fork=connections.close_all,
            record_upstream_errors=in_worker_thread(UpstreamError.record),
            access_log=options["access_log"],
            on_status=in_worker_thread(report_status),
            on_traffic=in_worker_thread(record_traffic),
            traffic_interval=options["traffic_interval"],
            cache_dir=options["cache_dir"],
            on_exit=in_worker_thread(forget_worker),
        )
        if return_code:
            raise SystemExit(return_code)
