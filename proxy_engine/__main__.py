"""`python -m proxy_engine --document-file PATH`: the engine without Django.

For development and tests: the snapshot document is read from a JSON file, and the revision
is the document's own `revision` (re-read from the file on every poll); upstream errors are
logged. `manage.py runproxy` is the production entry point (it records upstream errors in the
database); both call `proxy_engine.server.run`.
"""
import argparse
import json
import logging
import sys

from proxy_engine.events import log_upstream_errors
from proxy_engine.server import run
from proxy_engine.traffic import log_traffic


def file_source(path):
    def load_document():
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)

    def current_revision():
        return load_document().get("revision")

    return load_document, current_revision


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m proxy_engine", description=__doc__.splitlines()[0])
    parser.add_argument("--document-file", required=True, help="JSON snapshot document (docs/snapshot.md)")
    parser.add_argument("--http-port", type=int, default=8080)
    parser.add_argument("--https-port", type=int, default=None, help="serve HTTPS (SNI, ALPN) on this port")
    parser.add_argument("--default-certificate", default=None,
                        help="PEM file (certificate + key) for TLS clients naming no known host "
                             "(default: self-signed, made at start)")
    parser.add_argument("--bind", default="127.0.0.1", help="address(es), comma-separated")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--redis-url", default="")
    parser.add_argument("--poll-interval", type=float, default=2.0)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--access-log", default="off",
                        help='access log: a file path (JSON lines, rotated at 10 MiB x 5), "-" for stdout, or "off"')
    parser.add_argument("--traffic-interval", type=float, default=10.0,
                        help="seconds per bucket of the per-host request/error counts (logged at DEBUG)")
    parser.add_argument("--cache-dir", default=None,
                        help="directory of the response cache's disk tier (needs settings.cache.disk_bytes > 0)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    load_document, current_revision = file_source(args.document_file)
    return run(http_port=args.http_port, https_port=args.https_port, bind=args.bind,
               workers=args.workers, load_document=load_document, current_revision=current_revision,
               redis_url=args.redis_url or None, poll_interval=args.poll_interval,
               record_upstream_errors=log_upstream_errors, access_log=args.access_log,
               default_certificate=args.default_certificate,
               on_traffic=log_traffic, traffic_interval=args.traffic_interval, cache_dir=args.cache_dir)


if __name__ == "__main__":
    sys.exit(main())
