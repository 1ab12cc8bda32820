"""Response caching end to end: a real engine process (`python -m proxy_engine`) in front of a
real upstream that counts the requests it answers, on 127.0.0.1."""
import json
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.live import engine_process, issue_certificate, started_engines, write_doc

HOST = "app.example.test"


class Counting(BaseHTTPRequestHandler):
    """Answers by path; counts requests per path and keeps the headers each one carried.

    /cc/<Cache-Control value>  that Cache-Control, body = counter
    /etag                      max-age=1 with an ETag; 304 to a matching If-None-Match
    /vary                      Vary: Accept-Language, body = the language
    /cookie                    max-age=60 and Set-Cookie
    /slow                      max-age=60 after 0.5 s
    /size/<n>                  n bytes, max-age=300
    """

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        server = self.server
        path = self.path
        if server.broken:                # "down": close without answering
            self.close_connection = True
            return
        with server.lock:
            server.hits[path] = count = server.hits.get(path, 0) + 1
            server.seen.setdefault(path, []).append({k.lower(): v for k, v in self.headers.items()})
        headers = {}
        status = 200
        body = b"answer %d" % count
        if path.startswith("/cc/"):
            headers["Cache-Control"] = path[4:].replace("%20", " ")
        elif path == "/etag":
            headers.update({"Cache-Control": "max-age=1", "ETag": '"v1"'})
            if self.headers.get("If-None-Match") == '"v1"':
                status = 304
        elif path == "/vary":
            headers.update({"Cache-Control": "max-age=60", "Vary": "Accept-Language"})
            body = (self.headers.get("Accept-Language") or "none").encode() + b" %d" % count
        elif path == "/cookie":
            headers.update({"Cache-Control": "max-age=60", "Set-Cookie": "session=1"})
        elif path == "/slow":
            time.sleep(0.5)
            headers["Cache-Control"] = "max-age=60"
        elif path.startswith("/size/"):
            headers["Cache-Control"] = "max-age=300"
            body = (b"%d-" % count) * (int(path[6:].split("?")[0]) // 2)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if status == 304:
            self.end_headers()
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def start_counting():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Counting)
    server.daemon_threads = True
    server.lock = threading.Lock()
    server.hits = {}
    server.seen = {}
    server.broken = False
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def cache_doc(port, revision=1, generation=0, stale=0.0, memory=1 << 20, disk=0, ssl=None):
    host = {
        "id": 1, "domains": [HOST], "max_body_size": None, "locations": [],
        "upstreams": [{"scheme": "http", "host": "127.0.0.1", "port": port, "weight": 1}],
        "timeouts": {"connect": 1.0, "response": 5.0},
        "cache": {"enabled": True, "default_ttl": 0.0, "stale_if_error": stale}, "cache_generation": generation,
    }
    doc = {"revision": revision, "settings": {"default_site": {"action": "404"}, "trusted_proxies": [],
                                              "cache": {"memory_bytes": memory, "disk_bytes": disk}},
           "proxy_hosts": [host], "redirection_hosts": [], "dead_hosts": [], "streams": [], "access_lists": [],
           "certificates": []}
    if ssl is not None:
        host["ssl"], doc["certificates"] = ssl
    return doc


@pytest.fixture
def upstream():
    server = start_counting()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def engine_for(tmp_path):
    yield from started_engines(tmp_path, "--poll-interval", "0.2", path="/cc/no-store")


def get(engine, path, headers=None):
    response, body = engine.request("GET", path, host=HOST, headers=headers)
    return response.status, response.getheader("X-Cache-Status"), body, response


def test_hit_after_miss_reaches_the_upstream_once(upstream, engine_for):
    engine = engine_for(cache_doc(upstream.server_address[1]))
    assert get(engine, "/cc/max-age=60")[:3] == (200, "MISS", b"answer 1")
    status, cache_status, body, response = get(engine, "/cc/max-age=60")
    assert (status, cache_status, body) == (200, "HIT", b"answer 1")
    assert response.getheader("Age") is not None and response.getheader("X-Request-Id")
    assert upstream.hits["/cc/max-age=60"] == 1


@pytest.mark.parametrize("path", ["/cc/no-store", "/cc/private,%20max-age=60", "/cookie"])
def test_no_store_private_and_set_cookie_are_never_cached(upstream, engine_for, path):
    engine = engine_for(cache_doc(upstream.server_address[1]))
    before = upstream.hits.get(path, 0)          # the fixture's start probe asks /cc/no-store
    first = get(engine, path)
    second = get(engine, path)
    assert first[1] == second[1] == "MISS"
    assert (first[2], second[2]) == (b"answer %d" % (before + 1), b"answer %d" % (before + 2))
    assert upstream.hits[path] == before + 2


def test_vary_keeps_separate_entries(upstream, engine_for):
    engine = engine_for(cache_doc(upstream.server_address[1]))
    assert get(engine, "/vary", {"Accept-Language": "en"})[1:3] == ("MISS", b"en 1")
    assert get(engine, "/vary", {"Accept-Language": "fr"})[1:3] == ("MISS", b"fr 2")
    assert get(engine, "/vary", {"Accept-Language": "en"})[1:3] == ("HIT", b"en 1")
    assert get(engine, "/vary", {"Accept-Language": "fr"})[1:3] == ("HIT", b"fr 2")
    assert upstream.hits["/vary"] == 2


def test_a_stale_entry_is_revalidated_with_a_conditional_request(upstream, engine_for):
    engine = engine_for(cache_doc(upstream.server_address[1]))
    assert get(engine, "/etag")[1] == "MISS"
    time.sleep(1.2)
    status, cache_status, body, _ = get(engine, "/etag")
    assert (status, cache_status, body) == (200, "REVALIDATED", b"answer 1")
    assert upstream.hits["/etag"] == 2 and upstream.seen["/etag"][1]["if-none-match"] == '"v1"'
    assert get(engine, "/etag")[1] == "HIT"
    status, cache_status, body, _ = get(engine, "/etag", {"If-None-Match": '"v1"'})
    assert (status, body) == (304, b"") and upstream.hits["/etag"] == 2


def test_concurrent_misses_collapse_into_one_upstream_request(upstream, engine_for):
    engine = engine_for(cache_doc(upstream.server_address[1]))
    results = []

    def fetch():
        results.append(get(engine, "/slow")[:3])

    threads = [threading.Thread(target=fetch) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(results) == 6 and {r[2] for r in results} == {b"answer 1"}
    assert sorted(r[1] for r in results) == ["HIT"] * 5 + ["MISS"]
    assert upstream.hits["/slow"] == 1


def test_stale_is_served_when_the_upstream_is_down(engine_for):
    server = start_counting()
    port = server.server_address[1]
    engine = engine_for(cache_doc(port, stale=60.0))
    assert get(engine, "/cc/max-age=1")[1] == "MISS"
    server.broken = True                 # kept-alive connections now close unanswered ...
    server.shutdown()
    server.server_close()                # ... and new ones are refused
    time.sleep(1.2)
    status, cache_status, body, _ = get(engine, "/cc/max-age=1")
    assert (status, cache_status, body) == (200, "STALE", b"answer 1")
    assert get(engine, "/cc/max-age=1,%20must-revalidate")[0] == 502     # nothing stored for it: the error


def test_a_higher_cache_generation_purges(upstream, engine_for):
    port = upstream.server_address[1]
    engine = engine_for(cache_doc(port))
    get(engine, "/cc/max-age=60")
    assert get(engine, "/cc/max-age=60")[1] == "HIT"
    write_doc(engine.doc_path, cache_doc(port, revision=2, generation=1))
    deadline = time.monotonic() + 10
    while get(engine, "/cc/max-age=60")[1] == "HIT":
        assert time.monotonic() < deadline, "the purge never took effect"
        time.sleep(0.1)
    assert get(engine, "/cc/max-age=60")[1:3] == ("HIT", b"answer 2")


def test_disk_tier_takes_evictions_and_serves_hits_from_files(upstream, engine_for, tmp_path):
    cache_dir = tmp_path / "cache"
    engine = engine_for(cache_doc(upstream.server_address[1], memory=64_000, disk=4_000_000),
                        "--cache-dir", str(cache_dir))
    for i in range(30):
        assert get(engine, f"/size/6000?{i}")[1] == "MISS"
    deadline = time.monotonic() + 5
    while not [p for d in cache_dir.iterdir() for p in d.iterdir() if not p.name.endswith(".tmp")]:
        assert time.monotonic() < deadline, "nothing written to the disk tier"
        time.sleep(0.05)
    time.sleep(0.3)
    status, cache_status, body, _ = get(engine, "/size/6000?0")         # the first evicted
    assert (status, cache_status, len(body)) == (200, "HIT", 6000) and body.startswith(b"1-1-")
    assert upstream.hits["/size/6000?0"] == 1
    big = get(engine, "/size/200000")                                   # above memory's 1/8: straight to disk
    assert big[1] == "MISS" and get(engine, "/size/200000")[1:3] == ("HIT", big[2])


# -- HTTP/2 (curl over TLS, ALPN h2) ---------------------------------------------------------------

def test_http2_hit(upstream, tmp_path):
    if not shutil.which("curl") or "HTTP2" not in subprocess.run(
            ["curl", "--version"], capture_output=True, text=True).stdout:
        pytest.skip("curl with HTTP/2 is not installed")
    ssl = ({"certificate": "app", "force_https": False, "http2": True, "hsts": True, "hsts_subdomains": False},
           [issue_certificate(tmp_path, "app", HOST)])
    write_doc(tmp_path / "snapshot.json", cache_doc(upstream.server_address[1], ssl=ssl))
    engine = engine_process(tmp_path / "snapshot.json", https=True)
    https_port = engine.https_port
    try:
        engine.wait_for(lambda r, d: r.status != 503, path="/cc/no-store")

        def curl():
            out = subprocess.run(
                ["curl", "-s", "-i", "--http2", "--cacert", str(tmp_path / "ca.pem"), "--resolve",
                 f"{HOST}:{https_port}:127.0.0.1", f"https://{HOST}:{https_port}/cc/max-age=60"],
                capture_output=True, text=True, timeout=20).stdout
            head, _, body = out.replace("\r\n", "\n").partition("\n\n")
            return head.lower(), body

        head, body = curl()
        assert head.startswith("http/2 200") and "x-cache-status: miss" in head and body == "answer 1"
        head, body = curl()
        assert "x-cache-status: hit" in head and "strict-transport-security" in head and body == "answer 1"
        assert "\nage: " in head and upstream.hits["/cc/max-age=60"] == 1
        # The same entry is not served to plain HTTP (the scheme is part of the key).
        response, data = engine.request("GET", "/cc/max-age=60", host=HOST)
        assert response.getheader("X-Cache-Status") == "MISS" and data == b"answer 2"
    finally:
        engine.stop()


def test_requests_without_cache_on_the_host_get_no_cache_header(upstream, engine_for):
    doc = cache_doc(upstream.server_address[1])
    doc["proxy_hosts"][0]["cache"] = None
    engine = engine_for(doc)
    status, cache_status, body, _ = get(engine, "/cc/max-age=60")
    assert cache_status is None and get(engine, "/cc/max-age=60")[2] == b"answer 2"
    json.dumps(upstream.hits)
