"""What the engine benchmarks share: nginx (upstream and reverse proxy) and the engine, on
127.0.0.1, in a temporary directory. Not a test; see the scripts next to this file.

`Rig()` starts nginx (Debian nginx-light, one worker) serving as the upstream (1 KiB file,
a 100 MiB file) and as a reverse proxy with upstream keepalive, plus the engine
(`python -m proxy_engine`, one worker) in front of the same upstream. Uploads (`/upload`)
go to `upload_sink`, a thread here that reads whole bodies before answering 204 (nginx
answers a `return 204` before the body has arrived, which cuts a proxied upload short).
"""
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = "app.example.test"

# The start of every nginx.conf here: one worker in the foreground, its files in {tmp} named
# after {name} ("" for the rig's own nginx, "-tls" etc. for a script's), then the http block.
NGINX_HEAD = """
worker_processes 1;
daemon off;
pid {tmp}/nginx{name}.pid;
error_log {tmp}/error{name}.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
"""
KEEPALIVE = """  keepalive_requests 1000000;
  keepalive_timeout 300s;
"""

NGINX_CONF = NGINX_HEAD + KEEPALIVE + """  server {{
    listen 127.0.0.1:{upstream};
    location / {{ root {tmp}/www; }}
  }}
  upstream app {{ server 127.0.0.1:{upstream}; keepalive 64; }}
  upstream sink {{ server 127.0.0.1:{sink}; keepalive 8; }}
  server {{
    listen 127.0.0.1:{proxy};
    client_max_body_size 0;
    location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";
                 proxy_set_header Host $host; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; }}
    location /big/ {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";
                 proxy_buffering off; proxy_buffer_size 256k; proxy_buffers 4 256k; proxy_busy_buffers_size 256k; }}
    location /upload {{ proxy_pass http://sink; proxy_http_version 1.1; proxy_set_header Connection "";
                 proxy_request_buffering off; }}
  }}
}}
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"port {port} never opened")


def upload_sink():
    """A keep-alive HTTP server in a daemon thread that reads each request body whole
    (Content-Length or chunked) into one reused buffer, then answers 204. Returns its port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)

    def serve(conn):
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        pending = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in pending:
                    data = conn.recv(65536)
                    if not data:
                        return
                    pending += data
                head, pending = pending.split(b"\r\n\r\n", 1)
                lower = head.lower()
                if b"content-length:" in lower:
                    left = int(lower.split(b"content-length:")[1].split(b"\r\n")[0]) - len(pending)
                    pending = b""
                    while left > 0:
                        got = conn.recv_into(view, min(left, len(buf)))
                        if not got:
                            return
                        left -= got
                elif b"chunked" in lower:
                    while not pending.endswith(b"0\r\n\r\n"):      # enough for a benchmark client
                        data = conn.recv(1 << 20)
                        if not data:
                            return
                        pending = pending[-5:] + data
                    pending = b""
                conn.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")

    def accept():
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return listener.getsockname()[1]


def rss_kib(pid, field="VmRSS"):
    """Resident memory of `pid` in KiB (VmRSS now, or VmHWM: the peak)."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise ValueError(field)


def nginx_worker_pid(master_pid):
    with open(f"/proc/{master_pid}/task/{master_pid}/children") as handle:
        return int(handle.read().split()[0])


def tree_cpu(pid):
    """CPU seconds (user + system) used so far by `pid` and its live descendants."""
    total = 0.0
    stack = [pid]
    tick = os.sysconf("SC_CLK_TCK")
    while stack:
        current = stack.pop()
        try:
            with open(f"/proc/{current}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            with open(f"/proc/{current}/task/{current}/children") as handle:
                stack += [int(child) for child in handle.read().split()]
        except (OSError, ValueError):
            pass
    return total


def wrk_run(port, duration, connections, path="/1k.bin", host=HOST, headers=(), scheme="http", pid=None,
            hint=""):
    """`wrk -t1 -cN -dDs` against 127.0.0.1:port (extra request headers: "Name: value" strings);
    any non-2xx/3xx answer stops the benchmark (`hint` says what it may mean). Returns
    (requests/s, CPU microseconds per request of `pid`'s process tree, or None without pid)."""
    command = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "-H", f"Host: {host}"]
    for header in headers:
        command += ["-H", header]
    before = tree_cpu(pid) if pid else 0.0
    out = subprocess.run(command + [f"{scheme}://127.0.0.1:{port}{path}"], capture_output=True, text=True,
                         check=True).stdout
    used = tree_cpu(pid) - before if pid else None
    if re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        raise SystemExit(f"non-2xx answers on port {port}{hint}:\n{out}")
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return rate, (used * 1e6 / requests if used is not None and requests else None)


def wrk(port, duration, connections, path="/1k.bin"):
    """Requests/s of `wrk_run` for GET `path` with the rig's Host."""
    return wrk_run(port, duration, connections, path)[0]


def alternate(systems, rounds, measure, warm_up):
    """warm_up(target) once for each of `systems` ({name: target}), then `rounds` rounds of
    measure(target) for each in turn. Returns {name: [result of each round]}."""
    for target in systems.values():
        warm_up(target)
    results = {name: [] for name in systems}
    for _ in range(rounds):
        for name, target in systems.items():
            results[name].append(measure(target))
    return results


def median_ratio(label, values, bases, digits=2, round_digits=2):
    """"median ratio LABEL: M (per round: r1, r2, ...)" for the per-round ratios values/bases."""
    ratios = [v / b for v, b in zip(values, bases)]
    return (f"median ratio {label}: {statistics.median(ratios):.{digits}f} "
            f"(per round: {', '.join(f'{r:.{round_digits}f}' for r in ratios)})")


def start_nginx(tmp, name, conf):
    """nginx in the foreground on the configuration text `conf`, written as {tmp}/nginx{name}.conf."""
    path = f"{tmp}/nginx{name}.conf"
    with open(path, "w") as handle:
        handle.write(conf)
    return subprocess.Popen([shutil.which("nginx") or "/usr/sbin/nginx", "-c", path, "-p", tmp])


class Rig:
    def __init__(self, big_file=False, access_log="off"):
        for tool in ("nginx", "wrk"):
            if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
                raise SystemExit(f"{tool} is not installed (apt-get install -y nginx-light wrk)")
        self.tmp = tmp = tempfile.mkdtemp(prefix="gatehouse-bench-")
        os.chmod(tmp, 0o755)
        os.makedirs(f"{tmp}/www/big")
        with open(f"{tmp}/www/1k.bin", "wb") as handle:
            handle.write(b"x" * 1024)
        if big_file:
            with open(f"{tmp}/www/big/100m.bin", "wb") as handle:
                chunk = os.urandom(1 << 20)
                for _ in range(100):
                    handle.write(chunk)
        self.upstream, self.nginx_port = free_port(), free_port()
        self.sink = upload_sink()
        doc = {"revision": 1, "settings": {"default_site": {"action": "404"}, "trusted_proxies": []},
               "proxy_hosts": [{"id": 1, "domains": [HOST], "max_body_size": None,
                                "upstreams": [{"scheme": "http", "host": "127.0.0.1", "port": self.upstream,
                                               "weight": 1}],
                                "locations": [{"path": "/upload", "upstreams": [
                                    {"scheme": "http", "host": "127.0.0.1", "port": self.sink, "weight": 1}]}]}]}
        with open(f"{tmp}/snapshot.json", "w") as handle:
            json.dump(doc, handle)
        self.nginx = start_nginx(tmp, "", NGINX_CONF.format(tmp=tmp, name="", upstream=self.upstream,
                                                            proxy=self.nginx_port, sink=self.sink))
        self.engines = []
        try:
            self.engine, self.engine_port = self.spawn_engine(access_log)
            for port in (self.upstream, self.nginx_port):
                wait_port(port)
        except BaseException:
            self.close()                  # no engine or nginx left behind by a failed start
            raise
        time.sleep(0.3)

    def spawn_engine(self, access_log="off"):
        """Start an engine process (one worker) on the rig's document; `access_log` is "off", "-"
        or a file name in the temporary directory. Returns (process, port)."""
        log = access_log if access_log in ("off", "-") else os.path.join(self.tmp, access_log)
        proc, port = self.start_engine(f"{self.tmp}/snapshot.json", "--access-log", log)
        time.sleep(0.3)
        return proc, port

    def document(self):
        """The rig's snapshot document (a fresh copy to change)."""
        with open(f"{self.tmp}/snapshot.json") as handle:
            return json.load(handle)

    def engine_for(self, name, doc, *extra, cwd=ROOT):
        """An engine process (one worker) serving `doc`, written as NAME.json in the temporary
        directory, run from `cwd` (the tree whose proxy_engine runs). Returns (process, port)."""
        path = os.path.join(self.tmp, f"{name}.json")
        with open(path, "w") as handle:
            json.dump(doc, handle)
        return self.start_engine(path, *extra, cwd=cwd)

    def start_engine(self, document_file, *extra, cwd=ROOT):
        """`python -m proxy_engine` on `document_file` and a free port, stopped by close();
        returns (process, port) once the port is open."""
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "proxy_engine", "--document-file", document_file,
                                 "--http-port", str(port), "--log-level", "ERROR", *extra], cwd=cwd)
        self.engines.append(proc)
        wait_port(port)
        return proc, port

    def restart_engine(self):
        """A fresh engine process, so that its peak RSS is the next run's own."""
        self.engine.terminate()
        self.engine.wait()
        self.engine, self.engine_port = self.spawn_engine()
        return self.engine_port

    @property
    def nginx_worker(self):
        return nginx_worker_pid(self.nginx.pid)

    def close(self):
        procs = [*self.engines, self.nginx]
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
