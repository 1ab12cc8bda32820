"""Run all of Gatehouse under one supervisor: `python -m manager.launcher`.

Used by `make run` and by the Docker image alike. It

1. creates the data directory (GATEHOUSE_DATA_DIR, default ./data) and its logs/,
2. migrates the database and collects the static files,
3. chooses the message broker: REDIS_URL when given; else a private redis-server
   (started under the supervisor, loopback only, password-protected) when
   `redis-server` is installed; else no Redis at all (kombu's filesystem broker,
   the engine polls the database),
4. writes `<data>/supervisord.conf` and replaces itself with `supervisord -n`,
   which starts the dashboard (gunicorn), the proxy engine, the Celery worker and
   Celery beat, restarts whichever crashes, and stops all of them on Ctrl-C or
   SIGTERM.

`python -m manager.launcher --check` does steps 1-4 but prints the plan and the
configuration path instead of starting anything.
"""
from __future__ import annotations

import argparse
import errno
import hashlib
import os
import secrets
import shutil
import socket
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

MIN_PYTHON = (3, 11)
BASE_DIR = Path(__file__).resolve().parent.parent

# Programs stop in reverse priority order: Redis (lowest number) starts first and stops last.
PRIORITY = {"redis": 10, "engine": 20, "dashboard": 30, "worker": 40, "beat": 50}


class LaunchError(Exception):
    """Something the user must fix before Gatehouse can start."""


@dataclass
class Program:
    name: str
    command: list[str]
    stopwaitsecs: int = 15
    startsecs: int = 3


@dataclass
class Plan:
    data_dir: Path
    http_port: int
    https_port: int
    dashboard_port: int
    redis_mode: str  # "external" | "local" | "none"
    redis_url: str
    programs: list[Program] = field(default_factory=list)
    log_to_stdout: bool = False

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def conf_path(self) -> Path:
        return self.data_dir / "supervisord.conf"


# --------------------------------------------------------------------------- environment

def _env(name, default=""):
    return os.environ.get(name, default)


def _port(name, default):
    raw = _env(name)
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise LaunchError(f"{name} must be a port number 1-65535, got {raw!r}") from None
    if not 1 <= value <= 65535:
        raise LaunchError(f"{name} must be a port number 1-65535, got {value}")
    return value


def _truthy(name):
    return _env(name).strip().lower() in ("1", "true", "yes", "on")


def check_python():
    if sys.version_info < MIN_PYTHON:
        raise LaunchError(
            "Gatehouse needs Python %d.%d or newer; this is %s"
            % (*MIN_PYTHON, sys.version.split()[0])
        )


def resolve_data_dir() -> Path:
    return Path(_env("GATEHOUSE_DATA_DIR") or "./data").resolve()


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def check_port_free(name, port):
    """Fail early, with the variable to change, when a port is taken or not allowed."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise LaunchError(
                    f"port {port} ({name}) is already in use: stop what uses it or set {name}"
                ) from None
            if exc.errno == errno.EACCES:
                raise LaunchError(
                    f"port {port} ({name}) needs root or CAP_NET_BIND_SERVICE: "
                    f"run as root or set {name} to a port above 1023"
                ) from None
            raise


# --------------------------------------------------------------------------- Redis

def choose_redis(data_dir: Path):
    """Return (mode, url, redis Program or None)."""
    given = _env("REDIS_URL").strip()
    if given:
        return "external", given, None
    redis_server = _env("GATEHOUSE_REDIS_SERVER") or shutil.which("redis-server")
    if _truthy("GATEHOUSE_NO_LOCAL_REDIS") or not redis_server:
        return "none", "", None
    redis_dir = data_dir / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    password_file = redis_dir / "password"
    if password_file.exists():
        password = password_file.read_text().strip()
    else:
        password = secrets.token_hex(24)
        fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(password + "\n")
    # A fresh free loopback port at every start: never 6379, so a system Redis is left alone.
    # (A unix socket would be tidier, but redis-py only reads unix:// and kombu/Celery only
    # redis+socket://, and settings hands one REDIS_URL to all three.)
    port = free_loopback_port()
    conf = redis_dir / "redis.conf"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(
            "# Written by manager/launcher.py at every start; edits are lost.\n"
            f"bind 127.0.0.1\nport {port}\nprotected-mode yes\n"
            f"requirepass {password}\n"
            f'dir "{redis_dir}"\ndbfilename dump.rdb\nsave 60 100\nappendonly no\n'
            "daemonize no\nlogfile \"\"\nmaxmemory 128mb\nmaxmemory-policy noeviction\n"
        )
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    # Commands run by hand (importconfig, shell) read this to announce their changes too.
    fd = os.open(redis_dir / "url", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(url + "\n")
    program = Program("redis", [redis_server, str(conf)], stopwaitsecs=10, startsecs=1)
    return "local", url, program


REDIS_COSTS = {
    "external": "Redis: using REDIS_URL as given (Celery broker and results, instant engine reloads).",
    "local": (
        "Redis: no REDIS_URL, so a private redis-server runs under the supervisor "
        "(127.0.0.1 on a free port, password in {data}/redis/password; ~10 MB of memory). "
        "Changes reach the engine within milliseconds."
    ),
    "none": (
        "Redis: none (no REDIS_URL and no redis-server installed). Celery uses kombu's "
        "filesystem broker in {data}/broker and the engine polls the database every 2 s: "
        "changes take up to ~2 s to be served, task pickup is slower (polling), and there "
        "are no live task results. Install redis-server (apt-get install redis-server) "
        "or set REDIS_URL for instant reloads."
    ),
}


# --------------------------------------------------------------------------- plan

def make_plan() -> Plan:
    data_dir = resolve_data_dir()
    (data_dir / "logs").mkdir(parents=True, exist_ok=True)
    plan = Plan(
        data_dir=data_dir,
        http_port=_port("GATEHOUSE_HTTP_PORT", 8080),
        https_port=_port("GATEHOUSE_HTTPS_PORT", 8443),
        dashboard_port=_port("GATEHOUSE_DASHBOARD_PORT", 8081),
        redis_mode="none",
        redis_url="",
        log_to_stdout=_truthy("GATEHOUSE_LOG_STDOUT"),
    )
    if len({plan.http_port, plan.https_port, plan.dashboard_port}) != 3:
        raise LaunchError(
            "GATEHOUSE_HTTP_PORT, GATEHOUSE_HTTPS_PORT and GATEHOUSE_DASHBOARD_PORT must differ"
        )
    mode, url, redis_program = choose_redis(data_dir)
    plan.redis_mode, plan.redis_url = mode, url
    py = sys.executable
    workers = str(int(_env("GATEHOUSE_DASHBOARD_WORKERS") or 2))
    concurrency = str(int(_env("GATEHOUSE_WORKER_CONCURRENCY") or 2))
    if redis_program:
        plan.programs.append(redis_program)
    plan.programs += [
        Program("engine", [py, "manage.py", "runproxy"]),
        Program(
            "dashboard",
            [py, "-m", "gunicorn", "manager.wsgi:application",
             "--bind", f"0.0.0.0:{plan.dashboard_port}", "--workers", workers,
             "--access-logfile", "-", "--graceful-timeout", "10"],
        ),
        Program(
            "worker",
            [py, "-m", "celery", "-A", "manager", "worker", "-l", "info",
             "--concurrency", concurrency],
            stopwaitsecs=30,
        ),
        Program(
            "beat",
            [py, "-m", "celery", "-A", "manager", "beat", "-l", "info",
             "-s", str(data_dir / "celerybeat-schedule"), "--pidfile="],
        ),
    ]
    return plan


def child_environment(plan: Plan) -> dict:
    """What every program sees; supervisord hands its own environment down."""
    return {
        "GATEHOUSE_DATA_DIR": str(plan.data_dir),
        "GATEHOUSE_HTTP_PORT": str(plan.http_port),
        "GATEHOUSE_HTTPS_PORT": str(plan.https_port),
        "GATEHOUSE_DASHBOARD_PORT": str(plan.dashboard_port),
        "REDIS_URL": plan.redis_url,
        "DJANGO_SETTINGS_MODULE": "manager.settings",
        "PYTHONUNBUFFERED": "1",
    }


# --------------------------------------------------------------------------- supervisord.conf

def _q(value) -> str:
    """Quote one argument for a supervisord command line (shlex-parsed, %-expanded)."""
    text = str(value).replace("%", "%%")
    if text and all(c.isalnum() or c in "/._-:=@+," for c in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def control_socket_path(data_dir: Path) -> Path:
    path = data_dir / "supervisor.sock"
    if len(str(path)) < 100:  # AF_UNIX paths are limited to ~107 bytes
        return path
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"gatehouse-{digest}.sock"


def render_supervisord_conf(plan: Plan, ctl_password: str = "") -> str:
    d = plan.data_dir
    ctl_password = ctl_password or secrets.token_hex(16)
    lines = [
        "; Generated by manager/launcher.py at every start (make run, Docker); edits are lost.",
        "[supervisord]",
        "nodaemon=true",
        f"logfile={_q(plan.logs_dir / 'supervisord.log')}",
        "logfile_maxbytes=10MB",
        "logfile_backups=3",
        "loglevel=info",
        f"pidfile={_q(d / 'supervisord.pid')}",
        f"directory={_q(BASE_DIR)}",
        f"childlogdir={_q(plan.logs_dir)}",
    ]
    if os.geteuid() == 0:
        lines.append("user=root")
    sock = control_socket_path(d)
    lines += [
        "",
        "[unix_http_server]",
        f"file={_q(sock)}",
        "chmod=0700",
        "username=gatehouse",
        f"password={ctl_password}",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{_q(sock)}",
        "username=gatehouse",
        f"password={ctl_password}",
    ]
    for program in plan.programs:
        lines += [
            "",
            f"[program:{program.name}]",
            "command=" + " ".join(_q(arg) for arg in program.command),
            f"directory={_q(BASE_DIR)}",
            f"priority={PRIORITY.get(program.name, 100)}",
            "autostart=true",
            "autorestart=true",
            f"startsecs={program.startsecs}",
            "startretries=10",
            "stopsignal=TERM",
            f"stopwaitsecs={program.stopwaitsecs}",
            # Signal the whole process group: gunicorn workers, Celery pool children and
            # engine workers go with their parent, so nothing is orphaned.
            "stopasgroup=true",
            "killasgroup=true",
            "redirect_stderr=true",
        ]
        if plan.log_to_stdout:
            lines += ["stdout_logfile=/dev/stdout", "stdout_logfile_maxbytes=0"]
        else:
            lines += [
                f"stdout_logfile={_q(plan.logs_dir / (program.name + '.log'))}",
                "stdout_logfile_maxbytes=10MB",
                "stdout_logfile_backups=3",
            ]
    return "\n".join(lines) + "\n"


def write_supervisord_conf(plan: Plan) -> Path:
    """Write <data>/supervisord.conf, readable by its owner only (it holds the control password)."""
    fd = os.open(plan.conf_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(render_supervisord_conf(plan))
    os.chmod(plan.conf_path, 0o600)
    return plan.conf_path


# --------------------------------------------------------------------------- Django steps

def prepare_database(plan: Plan) -> bool:
    """Migrate and collect static files; return True when no user exists yet.

    Runs without Redis (a local redis-server is not up yet): anything published here
    is caught up by the engine's polling.
    """
    os.environ.update(child_environment(plan))
    if plan.redis_mode == "local":
        os.environ["REDIS_URL"] = ""
    import django
    from django.core.management import call_command

    django.setup()
    print("gatehouse: migrating the database ...", flush=True)
    call_command("migrate", interactive=False, verbosity=1)
    print("gatehouse: collecting static files ...", flush=True)
    call_command("collectstatic", interactive=False, verbosity=0)
    from django.contrib.auth import get_user_model

    first_start = not get_user_model().objects.exists()
    from django.db import connections

    connections.close_all()
    return first_start


def banner(plan: Plan, first_start: bool) -> str:
    data = plan.data_dir
    conf = plan.conf_path
    ctl = f"{sys.executable} -m supervisor.supervisorctl -c {conf}"
    out = [
        "",
        "gatehouse: data directory %s" % data,
        "gatehouse: " + REDIS_COSTS[plan.redis_mode].format(data=data),
        f"gatehouse: proxy on :{plan.http_port} (HTTP) and :{plan.https_port} (HTTPS)",
        f"gatehouse: dashboard at http://localhost:{plan.dashboard_port}/",
    ]
    if plan.log_to_stdout:
        out.append("gatehouse: program output goes to this console")
    else:
        out.append(
            f"gatehouse: program logs in {plan.logs_dir}/<name>.log "
            f"(follow them: tail -F {plan.logs_dir}/*.log)"
        )
    out.append(f"gatehouse: status / restart one: {ctl} status|restart <name>")
    if first_start:
        manage = BASE_DIR / "manage.py"
        out += [
            "",
            "gatehouse: FIRST START: there is no user yet and no default password.",
            f"gatehouse: open the dashboard at http://localhost:{plan.dashboard_port}/ "
            "after creating the first admin with:",
            f"gatehouse:     GATEHOUSE_DATA_DIR={data} {sys.executable} {manage} createsuperuser",
            "gatehouse: (from the repository root: .venv/bin/python manage.py createsuperuser)",
        ]
        if _truthy("GATEHOUSE_DOCKER"):  # set by docker/Dockerfile
            out.append(
                "gatehouse: (in Docker: docker compose -f docker/compose.yaml exec gatehouse "
                "python manage.py createsuperuser)"
            )
    out += ["gatehouse: starting everything under supervisord; Ctrl-C stops it all.", ""]
    return "\n".join(out)


# --------------------------------------------------------------------------- main

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m manager.launcher", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="prepare and write the configuration, print the plan, start nothing")
    parser.add_argument("--skip-port-check", action="store_true",
                        help="do not test that the three ports are free before starting")
    args = parser.parse_args(argv)
    try:
        check_python()
        plan = make_plan()  # a relative GATEHOUSE_DATA_DIR is taken from the caller's cwd
        os.chdir(BASE_DIR)
        if not (args.check or args.skip_port_check):
            check_port_free("GATEHOUSE_HTTP_PORT", plan.http_port)
            check_port_free("GATEHOUSE_HTTPS_PORT", plan.https_port)
            check_port_free("GATEHOUSE_DASHBOARD_PORT", plan.dashboard_port)
        first_start = prepare_database(plan)
        conf = write_supervisord_conf(plan)
    except LaunchError as exc:
        print(f"gatehouse: error: {exc}", file=sys.stderr)
        return 2
    os.environ.update(child_environment(plan))
    print(banner(plan, first_start), flush=True)
    if args.check:
        print(f"gatehouse: --check: wrote {conf}; not starting", flush=True)
        return 0
    sys.stdout.flush()
    sys.stderr.flush()
    # Replace this process: supervisord becomes the one to signal (Ctrl-C, SIGTERM,
    # docker stop); it stops every program, then exits.
    os.execv(sys.executable, [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(conf)])
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
