"""Starting the portal's own processes (daphne, Celery) on this machine: the demo, the load benchmark
and the integration tests use these, so all three run the portal exactly the same way."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

BASE_DIR = Path(__file__).resolve().parent.parent
ASGI_APP = "portal.asgi:application"  # what every daphne process serves
WSGI_APP = "portal.wsgi:application"  # what the HTTP workers (gunicorn) serve beside daphne


def free_port(preferred: int | None = None, host: str = "127.0.0.1") -> int:
    """``preferred`` if nothing listens there, else a free port the OS picks."""
    if preferred:
        with socket.socket() as s:
            try:
                s.bind((host, preferred))
                return preferred
            except OSError:
                pass
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def local_env(env: dict[str, str]) -> dict[str, str]:
    """This process's environment plus ``env``, as a local (loopback) portal process needs it.

    The settings default to production, which refuses to start without ``DJANGO_SECRET_KEY``. Everything
    started from here listens on 127.0.0.1 (the demo, benchmarks, tests), so unless the caller chose
    (``DJANGO_DEBUG`` or a key), it runs as a local development portal.
    """
    merged = {**os.environ, **env}
    if "DJANGO_DEBUG" not in merged and not merged.get("DJANGO_SECRET_KEY"):
        merged["DJANGO_DEBUG"] = "1"
    return merged


def manage(args: list[str], env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    """Run ``manage.py ARGS`` in a child process with ``env`` (added to this process's environment)."""
    return subprocess.run(
        [sys.executable, str(BASE_DIR / "manage.py"), *args],
        env=local_env(env),
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        check=check,
    )


def wait_http(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    """Wait until ``url`` answers 200.

    Raises:
        RuntimeError: ``proc`` exited or ``timeout`` passed.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s")


def http_command(port: int, workers: int, threads: int = 4, host: str = "127.0.0.1") -> list[str]:
    """gunicorn serving :data:`WSGI_APP` on ``host:port``: ``workers`` processes of ``threads`` threads each
    (threaded workers keep connections alive, as nginx's upstream keepalive and nodes' clients reuse them)."""
    return [
        *(sys.executable, "-m", "gunicorn", "--bind", f"{host}:{port}", "--workers", str(workers)),
        *("--worker-class", "gthread", "--threads", str(threads), "--keep-alive", "75", WSGI_APP),
    ]


def _spawn(cmd: list[str], env: dict[str, str], log_path: Path | None, pass_fds: tuple = ()) -> subprocess.Popen:
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(
            cmd,
            env=local_env(env),
            cwd=BASE_DIR,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            pass_fds=pass_fds,
        )
    finally:
        if log_path:
            out.close()


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGINT, then SIGTERM, then SIGKILL: give the process (and its children) a chance to clean up."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)  # its own session: reaches Celery's pool children too
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@dataclass
class PortalProcesses:
    """daphne (and optionally a Celery worker with embedded beat) serving the portal on loopback.

    Args:
        env: environment for every process (``DATABASE_URL``, ``REDIS_URL``, ``SWARM_*`` ...).
        port: preferred port (a free one if taken; 0 for any).
        celery: also run ``celery worker --beat``.
        log_dir: where ``daphne.log`` and ``celery.log`` go (``None``: discarded).
        migrate: run ``manage.py migrate`` first.
    """

    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    celery: bool = True
    log_dir: Path | None = None
    migrate: bool = True
    workers: int = 1  # daphne processes sharing one listening socket (the kernel spreads connections)
    access_log: bool = True
    gateway: bool = True  # a `run_gateway` worker when the channel layer is Redis (else it runs inside daphne)
    # >0: plain HTTP also from gunicorn (WSGI) with this many processes on `http_port` (docs/deploy.md);
    # None: PORTAL_HTTP_WORKERS from `env` or the environment (production sets it), else 0.
    http_workers: int | None = None
    http_port: int = 0
    procs: list[subprocess.Popen] = field(default_factory=list)
    _metrics_tmp: Path | None = field(default=None, repr=False)  # a metrics folder of our own, without log_dir

    def __post_init__(self) -> None:
        if self.http_workers is None:
            self.http_workers = int({**os.environ, **self.env}.get("PORTAL_HTTP_WORKERS") or 0)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        """Where plain HTTP is served: the gunicorn workers' ``http://127.0.0.1:PORT`` if any, else daphne's."""
        return f"http://127.0.0.1:{self.http_port}" if self.http_workers else self.url

    def start(self, timeout: float = 60.0) -> PortalProcesses:
        """Migrate, start everything, and wait until the portal answers."""
        if self.log_dir:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        self._metrics_folder()
        if self.migrate:
            result = manage(["migrate", "--noinput", "-v0"], self.env, check=False)
            if result.returncode:
                raise RuntimeError(f"migrate failed:\n{result.stdout}\n{result.stderr}")
        self.port = free_port(self.port or None)
        quiet = [] if self.access_log else ["-v", "0"]
        if self.workers == 1:
            daphne = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), *quiet]
            self.procs.append(_spawn([*daphne, ASGI_APP], self.env, self._log("daphne")))
        else:
            listener = socket.create_server(("127.0.0.1", self.port), backlog=1024)
            listener.set_inheritable(True)
            fd = str(listener.fileno())
            for i in range(self.workers):
                daphne = [sys.executable, "-m", "daphne", "--fd", fd, *quiet, ASGI_APP]
                self.procs.append(_spawn(daphne, self.env, self._log(f"daphne-{i}"), pass_fds=(listener.fileno(),)))
            listener.close()  # the workers hold it now
        if self.http_workers:
            self.http_port = free_port(self.http_port or None)
        started = {name: _spawn(cmd, self.env, self._log(name)) for name, cmd in self.workers_commands().items()}
        self.procs += started.values()
        try:
            wait_http(self.url + "/api/v1/models/", timeout, self.procs[0])
            if "http" in started:
                wait_http(self.http_url + "/api/v1/models/", timeout, started["http"])
        except Exception:
            self.stop()
            raise
        return self

    def workers_commands(self) -> dict[str, list[str]]:
        """The processes started beside daphne, by log name: the HTTP workers (when asked for), the chat gateway
        (when it runs on its own) and the Celery worker with embedded beat. ``deploy/`` declares the same ones
        (tests/deploy checks)."""
        commands = {}
        if self.http_workers:
            commands["http"] = http_command(self.http_port, self.http_workers)
        if self.gateway and self.separate_gateway:
            commands["gateway"] = [sys.executable, str(BASE_DIR / "manage.py"), "run_gateway"]
        if self.celery:
            worker = [sys.executable, "-m", "celery", "-A", "portal", "worker", "--beat", "--pool", "solo"]
            commands["celery"] = worker + ["--loglevel", "INFO", "--without-mingle", "--without-gossip"]
        return commands

    @property
    def separate_gateway(self) -> bool:
        """The chat gateway runs as its own process: the channel layer is Redis and daphne does not embed one."""
        env = {**os.environ, **self.env}
        return bool(env.get("REDIS_URL")) and env.get("CHAT_GATEWAY_EMBEDDED", "0").lower() in ("0", "false", "no", "")

    def _metrics_folder(self) -> None:
        # Every process counts its Prometheus metrics into files here, and daphne's /metrics adds them up
        # (portal/metrics.py): otherwise the gateway's and Celery's counters would be invisible. Fresh per start.
        if "PROMETHEUS_MULTIPROC_DIR" in {**os.environ, **self.env}:
            return
        if self.log_dir:
            folder = self.log_dir / "metrics"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
        else:  # removed again by stop()
            folder = self._metrics_tmp = Path(tempfile.mkdtemp(prefix="layerswarm-metrics-"))
        self.env = {**self.env, "PROMETHEUS_MULTIPROC_DIR": str(folder)}

    def _log(self, name: str) -> Path | None:
        return self.log_dir / f"{name}.log" if self.log_dir else None

    def alive(self) -> bool:
        """Every process still running."""
        return all(p.poll() is None for p in self.procs)

    def stop(self) -> None:
        """Stop every process."""
        for p in reversed(self.procs):
            stop(p)
        self.procs = []
        if self._metrics_tmp is not None:
            shutil.rmtree(self._metrics_tmp, ignore_errors=True)
            self.env = {k: v for k, v in self.env.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
            self._metrics_tmp = None

    def __enter__(self) -> PortalProcesses:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@contextmanager
def scratch_database(base_url: str, name: str, folder: Path) -> Iterator[str]:
    """A new, empty database next to ``base_url``'s, dropped afterwards; yields its URL.

    PostgreSQL URLs get a fresh database ``name`` on the same server; anything else gets a SQLite
    file in ``folder``. Used by the load benchmark and the tests that run a real portal.
    """
    if not base_url.startswith(("postgres://", "postgresql://")):
        path = folder / f"{name}.sqlite3"
        path.unlink(missing_ok=True)
        yield f"sqlite:///{path}"
        path.unlink(missing_ok=True)
        return
    import psycopg
    from psycopg import sql

    parts = urlsplit(base_url)
    admin_url = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def create_user_with_node_token(env: dict[str, str], username: str, password: str, token_name: str = "test") -> str:
    """Create (or reuse) ``username`` in the database ``env`` points at and return a new node token."""
    code = (
        "from django.contrib.auth.models import User\n"
        "from portal.accounts.models import NodeToken\n"
        f"user, _ = User.objects.get_or_create(username={username!r})\n"
        f"user.set_password({password!r}); user.save()\n"
        f"print(NodeToken.create_for(user, {token_name!r})[1])\n"
    )
    return manage(["shell", "-c", code], env).stdout.strip().splitlines()[-1]


@contextmanager
def live_portal(
    folder: Path, name: str, celery: bool = True, env: dict[str, str] | None = None
) -> Iterator[PortalProcesses]:
    """A portal on a scratch database (PostgreSQL when ``DATABASE_URL`` says so, else SQLite) with
    quick heartbeat timing, its own Celery broker folder, and logs in ``folder``."""
    base_url = os.environ.get("DATABASE_URL", "sqlite://")
    with scratch_database(base_url, name, folder) as db_url:
        full_env = {
            "DATABASE_URL": db_url,
            "LAYERSWARM_VAR_DIR": str(folder / "var"),
            "SWARM_HEARTBEAT_INTERVAL": "1",
            "SWARM_HEARTBEAT_TIMEOUT": "4",
            "SWARM_EXPIRE_EVERY": "1",
            **(env or {}),
        }
        with PortalProcesses(env=full_env, celery=celery, log_dir=folder / "logs") as portal:
            yield portal
