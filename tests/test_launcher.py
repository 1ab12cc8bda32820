"""The launcher behind `make run` and the Docker image.

Unit tests check the plan and the generated supervisord.conf; the e2e tests run
`python -m manager.launcher` as a real process on free ports with a temporary data
directory (and its own redis-server when one is installed), then stop it the way a
user does (Ctrl-C to the process group, SIGTERM) and look for leftover processes.
"""
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from manager import launcher

REPO = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 90  # seconds: first start migrates a fresh database on a 2-core machine
STOP_TIMEOUT = 45  # seconds: supervisord's stopwaitsecs are 10-30 s per program at worst


# --------------------------------------------------------------------------- unit tests


@pytest.fixture
def launcher_env(monkeypatch, tmp_path):
    for name in ("REDIS_URL", "GATEHOUSE_REDIS_SERVER", "GATEHOUSE_NO_LOCAL_REDIS",
                 "GATEHOUSE_LOG_STDOUT", "GATEHOUSE_HTTP_PORT", "GATEHOUSE_HTTPS_PORT",
                 "GATEHOUSE_DASHBOARD_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GATEHOUSE_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def parse_conf(path):
    from supervisor.options import ServerOptions

    options = ServerOptions()
    options.realize(args=["-c", str(path)])
    return options


def test_defaults_and_filesystem_fallback(launcher_env, monkeypatch):
    monkeypatch.setenv("GATEHOUSE_NO_LOCAL_REDIS", "1")
    plan = launcher.make_plan()
    assert (plan.http_port, plan.https_port, plan.dashboard_port) == (8080, 8443, 8081)
    assert plan.data_dir == launcher_env.resolve()
    assert plan.logs_dir.is_dir()
    assert plan.redis_mode == "none" and plan.redis_url == ""
    assert [p.name for p in plan.programs] == ["engine", "dashboard", "worker", "beat"]
    assert launcher.child_environment(plan)["REDIS_URL"] == ""
    assert "filesystem broker" in launcher.REDIS_COSTS["none"]


def test_external_redis_url_is_used_as_given(launcher_env, monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/3")
    plan = launcher.make_plan()
    assert plan.redis_mode == "external"
    assert "redis" not in [p.name for p in plan.programs]
    assert launcher.child_environment(plan)["REDIS_URL"] == "redis://127.0.0.1:6379/3"


def test_local_redis_is_private_and_its_url_suits_every_client(launcher_env, monkeypatch):
    monkeypatch.setenv("GATEHOUSE_REDIS_SERVER", "/usr/bin/redis-server")
    plan = launcher.make_plan()
    assert plan.redis_mode == "local"
    match = re.fullmatch(r"redis://:([0-9a-f]{48})@127\.0\.0\.1:(\d+)/0", plan.redis_url)
    assert match, plan.redis_url
    password, port = match.group(1), int(match.group(2))
    assert port != 6379
    password_file = plan.data_dir / "redis" / "password"
    assert password_file.read_text().strip() == password
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    conf = (plan.data_dir / "redis" / "redis.conf").read_text()
    assert f"port {port}\n" in conf and "bind 127.0.0.1\n" in conf
    assert f"requirepass {password}\n" in conf
    assert plan.programs[0].name == "redis"
    # One URL for redis-py (engine), kombu (broker) and Celery's result backend.
    import redis
    from celery import Celery
    from kombu import Connection

    client = redis.Redis.from_url(plan.redis_url)
    assert client.connection_pool.connection_kwargs["port"] == port
    assert Connection(plan.redis_url).transport_cls == "redis"
    backend = Celery(broker=plan.redis_url, backend=plan.redis_url).backend
    assert type(backend).__name__ == "RedisBackend"
    # The password survives restarts; the port is picked afresh.
    assert launcher.make_plan().redis_url.startswith(f"redis://:{password}@127.0.0.1:")


def test_commands_run_by_hand_find_the_private_redis(launcher_env, monkeypatch):
    monkeypatch.setenv("GATEHOUSE_REDIS_SERVER", "/usr/bin/redis-server")
    plan = launcher.make_plan()
    url_file = plan.data_dir / "redis" / "url"
    assert stat.S_IMODE(url_file.stat().st_mode) == 0o600
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DJANGO_SETTINGS_MODULE")}
    shown = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", "from django.conf import settings; print(settings.REDIS_URL)"],
        cwd=REPO, env=env, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    assert shown == plan.redis_url


def test_ports_are_validated(launcher_env, monkeypatch):
    monkeypatch.setenv("GATEHOUSE_HTTP_PORT", "70000")
    with pytest.raises(launcher.LaunchError, match="GATEHOUSE_HTTP_PORT"):
        launcher.make_plan()
    monkeypatch.setenv("GATEHOUSE_HTTP_PORT", "8081")
    with pytest.raises(launcher.LaunchError, match="must differ"):
        launcher.make_plan()


def test_a_taken_port_names_its_variable():
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(launcher.LaunchError, match=f"port {port} .*GATEHOUSE_DASHBOARD_PORT"):
            launcher.check_port_free("GATEHOUSE_DASHBOARD_PORT", port)


@pytest.mark.parametrize("to_stdout", [False, True])
def test_supervisord_conf_restarts_and_group_stops_every_program(launcher_env, monkeypatch, to_stdout):
    monkeypatch.setenv("GATEHOUSE_REDIS_SERVER", "/usr/bin/redis-server")
    monkeypatch.setenv("GATEHOUSE_DASHBOARD_PORT", "18081")
    if to_stdout:
        monkeypatch.setenv("GATEHOUSE_LOG_STDOUT", "1")
    plan = launcher.make_plan()
    conf = launcher.write_supervisord_conf(plan)
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600  # it holds the control password
    options = parse_conf(conf)
    assert options.server_configs[0]["username"] == "gatehouse"
    configs = {group.name: group.process_configs[0] for group in options.process_group_configs}
    assert set(configs) == {"redis", "engine", "dashboard", "worker", "beat"}
    for name, config in configs.items():
        assert config.autorestart, name
        assert config.stopasgroup and config.killasgroup, name
        assert config.directory == str(REPO)
        assert config.redirect_stderr
        if to_stdout:
            assert config.stdout_logfile == "/dev/stdout"
        else:
            assert config.stdout_logfile == str(plan.logs_dir / f"{name}.log")
    # Redis starts first and so stops last.
    assert min(configs.values(), key=lambda c: c.priority).name == "redis"
    assert "--bind 0.0.0.0:18081" in configs["dashboard"].command
    assert "manage.py runproxy" in configs["engine"].command
    assert f"-s {plan.data_dir / 'celerybeat-schedule'}" in configs["beat"].command
    assert configs["worker"].command.split()[1:6] == ["-m", "celery", "-A", "manager", "worker"]


def test_docker_image_runs_the_same_launcher():
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    assert "FROM python:3.11-slim-bookworm" in dockerfile
    assert 'CMD ["python", "-m", "manager.launcher"]' in dockerfile
    for line in ("GATEHOUSE_DATA_DIR=/data", "GATEHOUSE_HTTP_PORT=80", "GATEHOUSE_HTTPS_PORT=443",
                 "GATEHOUSE_DASHBOARD_PORT=81", "VOLUME /data", "redis-server"):
        assert line in dockerfile
    compose = (REPO / "docker" / "compose.yaml").read_text()
    import yaml

    service = yaml.safe_load(compose)["services"]["gatehouse"]
    assert service["build"]["dockerfile"] == "docker/Dockerfile"
    assert {"80:80", "443:443", "81:81"} <= set(service["ports"])
    assert any(v.endswith(":/data") for v in service["volumes"])


# --------------------------------------------------------------------------- e2e


def free_ports(count):
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def processes_with(marker):
    """Pids of live processes whose environment holds `marker` (our data dir)."""
    needle = marker.encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def process_group(pgid):
    """Live (non-zombie) pids whose process group is `pgid`."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def describe(pids):
    out = []
    for pid in pids:
        try:
            out.append(f"{pid}: " + Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            out.append(f"{pid}: (gone)")
    return "\n".join(out)


class Launch:
    def __init__(self, tmp_path, **extra_env):
        self.data_dir = tmp_path / "data"
        self.http_port, self.https_port, self.dashboard_port = free_ports(3)
        self.output_path = tmp_path / "launcher.out"
        env = {k: v for k, v in os.environ.items()
               if k not in ("REDIS_URL", "DATABASE_URL", "DJANGO_SETTINGS_MODULE")
               and not k.startswith("GATEHOUSE_")}
        env.update(
            GATEHOUSE_DATA_DIR=str(self.data_dir),
            GATEHOUSE_HTTP_PORT=str(self.http_port),
            GATEHOUSE_HTTPS_PORT=str(self.https_port),
            GATEHOUSE_DASHBOARD_PORT=str(self.dashboard_port),
            **extra_env,
        )
        self.env = env
        self.marker = f"GATEHOUSE_DATA_DIR={self.data_dir}\0"
        with open(self.output_path, "wb") as out:
            # A session of its own: signals to it reach neither pytest nor the terminal.
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "manager.launcher"], cwd=REPO, env=env,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def output(self):
        return self.output_path.read_text(errors="replace")

    def logs(self):
        parts = [f"--- launcher output\n{self.output[-6000:]}"]
        for log in sorted((self.data_dir / "logs").glob("*.log")):
            parts.append(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    def log_text(self, name):
        try:
            return (self.data_dir / "logs" / f"{name}.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def dashboard_status(self):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.dashboard_port}/login/", timeout=3) as r:
                return r.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return None

    def engine_answer(self):
        """The engine's first response line to a request for an unknown host, or None."""
        try:
            with socket.create_connection(("127.0.0.1", self.http_port), timeout=3) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: nobody.example.test\r\nConnection: close\r\n\r\n")
                data = sock.recv(200)
        except OSError:
            return None
        line = data.split(b"\r\n", 1)[0]
        return line.decode("latin-1") if line.startswith(b"HTTP/1.") else None

    def wait_until(self, what, check, timeout=READY_TIMEOUT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"launcher exited ({self.proc.returncode}) while waiting for {what}\n{self.logs()}")
            value = check()
            if value:
                return value
            time.sleep(0.5)
        pytest.fail(f"{what}: not within {timeout}s\n{self.logs()}")

    def wait_ready(self):
        self.wait_until("dashboard GET /login/ -> 200", lambda: self.dashboard_status() == 200)
        return self.wait_until("engine answering HTTP", self.engine_answer)

    def ctl(self, *args):
        return subprocess.run(
            [sys.executable, "-m", "supervisor.supervisorctl", "-c",
             str(self.data_dir / "supervisord.conf"), *args],
            cwd=REPO, env=self.env, capture_output=True, text=True, timeout=30,
        ).stdout

    def pid_of(self, name):
        match = re.search(rf"^{name}\s+RUNNING\s+pid (\d+)", self.ctl("status", name), re.M)
        return int(match.group(1)) if match else None

    def wait_stopped(self):
        try:
            self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"launcher still running {STOP_TIMEOUT}s after the stop signal\n{self.logs()}")
        deadline = time.monotonic() + 10
        while (left := processes_with(self.marker)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not left, f"processes left behind:\n{describe(left)}\n{self.logs()}"

    def cleanup(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in processes_with(self.marker):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


@pytest.fixture
def launch(tmp_path):
    started = []

    def start(**extra_env):
        started.append(Launch(tmp_path, **extra_env))
        return started[-1]

    yield start
    for item in started:
        item.cleanup()


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_first_start_serves_and_ctrl_c_stops_everything(launch):
    run = launch()
    status_line = run.wait_ready()
    assert status_line.split()[1].isdigit(), status_line
    out = run.output
    assert f"http://localhost:{run.dashboard_port}/" in out
    assert "no default password" in out
    assert "manage.py createsuperuser" in out
    if Path("/usr/bin/redis-server").exists() or run.data_dir.joinpath("redis", "redis.conf").exists():
        assert "private redis-server" in out
        run.wait_until("redis RUNNING", lambda: run.pid_of("redis"), timeout=30)
    for name in ("engine", "dashboard", "worker", "beat"):
        # RUNNING = up for startsecs (a few seconds) without exiting.
        run.wait_until(f"{name} RUNNING", lambda: run.pid_of(name), timeout=30)
    assert len(processes_with(run.marker)) >= 5

    # Ctrl-C in a terminal: SIGINT to the whole foreground process group.
    os.killpg(run.proc.pid, signal.SIGINT)
    run.wait_stopped()
    for port in (run.http_port, run.dashboard_port):
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open"

    # Once an admin exists, the next start no longer prints the first-start help.
    env = dict(run.env, DJANGO_SUPERUSER_PASSWORD="a-long-test-passphrase-42")
    subprocess.run(
        [sys.executable, "manage.py", "createsuperuser", "--noinput", "--username", "admin",
         "--email", "admin@example.test"],
        cwd=REPO, env=env, check=True, capture_output=True, timeout=120,
    )
    check = subprocess.run(
        [sys.executable, "-m", "manager.launcher", "--check"],
        cwd=REPO, env=run.env, capture_output=True, text=True, timeout=120,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "FIRST START" not in check.stdout
    assert f"http://localhost:{run.dashboard_port}/" in check.stdout


@pytest.mark.e2e
@pytest.mark.timeout(300)
@pytest.mark.parametrize("broker", ["redis", "filesystem"])
def test_killed_children_are_restarted_and_sigterm_stops_everything(launch, broker):
    if broker == "redis" and not Path("/usr/bin/redis-server").exists():
        pytest.skip("redis-server is not installed (.ci/run installs it)")
    run = launch(**({"GATEHOUSE_NO_LOCAL_REDIS": "1"} if broker == "filesystem" else {}))
    run.wait_ready()
    if broker == "filesystem":
        assert "Redis: none" in run.output and "filesystem broker" in run.output
        assert "redis" not in run.ctl("status")
    else:
        assert "private redis-server" in run.output
    assert "celery@" in run.wait_until(
        "worker ready", lambda: "ready." in (log := run.log_text("worker")) and log
    )
    for name in ("beat", "engine"):
        old = run.wait_until(f"{name} RUNNING", lambda: run.pid_of(name), timeout=30)
        os.kill(old, signal.SIGKILL)
        new = run.wait_until(
            f"{name} restarted", lambda: (p := run.pid_of(name)) and p != old and p, timeout=60
        )
        assert new != old
        # supervisord puts each program in a process group of its own (pgid = its pid):
        # whatever the killed program had forked must not outlive it (an OOM kill is
        # this case), or it keeps serving, and holding ports, outside supervision.
        deadline = time.monotonic() + 10
        while (orphans := process_group(old)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not orphans, (
            f"{name}'s children outlived its SIGKILL (they should die with their parent, "
            f"e.g. prctl(PR_SET_PDEATHSIG) after fork):\n{describe(orphans)}"
        )
    run.wait_until("engine answering again", run.engine_answer, timeout=60)
    supervisor_log = run.log_text("supervisord")
    assert re.search(r"exited: beat \(terminated by SIGKILL; not expected\)", supervisor_log)
    assert re.search(r"exited: engine \(terminated by SIGKILL; not expected\)", supervisor_log)
    assert "exited: beat" in run.output  # the console shows it too

    # `docker stop` and `kill`: SIGTERM to the launcher (now supervisord) alone.
    run.proc.send_signal(signal.SIGTERM)
    run.wait_stopped()
