"""A throwaway PostgreSQL server for the distributed (multi-process) sweep tests.

``postgres_url`` (session scope) creates a cluster in a temporary directory with Debian's
``initdb``/``pg_ctl`` (``.ci/postgres.sh`` installs them), starts it on 127.0.0.1 only, on a free
port, with its unix socket in that directory too, creates the database ``stitch`` and yields a
SQLAlchemy URL ``postgresql+psycopg2://USER@127.0.0.1:PORT/stitch`` (trust auth, no password). At
the end of the session the server is stopped and the directory removed.

PostgreSQL refuses to run as root: as root, initdb and the server run as the ``postgres`` user
(created by Debian's package) or else ``nobody``, and the directory is owned by that user.

Where any step fails (no binaries, no psycopg2, the server does not start) the tests that use the
fixture are skipped with a one-line reason; with ``STITCH_REQUIRE_POSTGRES=1`` they fail instead.

Use it from a test module with ``from postgres_fixture import postgres_url  # noqa: F401``.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

DB_NAME = "stitch"
DB_USER = "stitch"  # the cluster's superuser (initdb -U), not an OS user
_SKIP = (
    "PostgreSQL could not be started: {}; the distributed sweep test needs it (.ci/postgres.sh installs it)"
)
# Fast and small: a test cluster whose data is thrown away.
_SERVER_CONF = """
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{sockdir}'
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 16MB
max_connections = 50
max_wal_size = 64MB
autovacuum = off
log_min_messages = warning
"""


class _Unavailable(Exception):
    """A step of the start-up failed; the message is the one-line reason."""


def _unavailable(reason: str) -> None:
    reason = " ".join(str(reason).split())  # one line
    if os.environ.get("STITCH_REQUIRE_POSTGRES") == "1":
        pytest.fail(_SKIP.format(reason), pytrace=False)
    pytest.skip(_SKIP.format(reason))


def _find_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    # Debian keeps the server binaries out of PATH; take the newest major version.
    cands = glob.glob(f"/usr/lib/postgresql/*/bin/{name}")
    cands.sort(key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if cands:
        return cands[-1]
    raise _Unavailable(f"no {name} on PATH or under /usr/lib/postgresql/*/bin")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_user() -> pwd.struct_passwd | None:
    """The unprivileged OS user to run PostgreSQL as, or None to run as ourselves (not root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            pass
    raise _Unavailable("running as root and there is no 'postgres' or 'nobody' user to run it as")


class _Cluster:
    def __init__(self) -> None:
        try:
            import psycopg2  # noqa: F401  (SQLAlchemy's postgresql+psycopg2 driver)
        except ImportError as e:
            raise _Unavailable(f"psycopg2 is not installed ({e}; pip install psycopg2-binary)") from e
        self.initdb = _find_bin("initdb")
        self.pg_ctl = _find_bin("pg_ctl")
        self.user = _server_user()
        # Not under pytest's basetemp: that is mode 0700 and root's, which the server user can't enter.
        self.root = Path(tempfile.mkdtemp(prefix="stitch-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = 0
        self.started = False
        if self.user is not None:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)

    def _run(self, args: list[str], timeout: float) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C")
        kw: dict = {}
        if self.user is not None:
            kw = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
            env["HOME"] = str(self.root)
            env["USER"] = env["LOGNAME"] = self.user.pw_name
        try:
            return subprocess.run(
                args, cwd=self.root, env=env, capture_output=True, text=True, timeout=timeout, **kw
            )
        except (OSError, subprocess.SubprocessError) as e:
            raise _Unavailable(f"{Path(args[0]).name}: {e}") from e

    @staticmethod
    def _tail(text: str) -> str:
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        return lines[-1] if lines else "(no output)"

    def init(self) -> None:
        cluster = [self.initdb, "-D", str(self.data), "-U", DB_USER, "--auth=trust"]
        r = self._run([*cluster, "-E", "UTF8", "--locale=C", "--no-sync"], timeout=120)
        if r.returncode != 0:
            raise _Unavailable(f"initdb failed: {self._tail(r.stderr or r.stdout)}")

    def start(self, attempts: int = 3) -> None:
        conf = self.data / "postgresql.conf"
        base = conf.read_text()
        last = ""
        for _ in range(attempts):  # a free port can be taken between the check and the bind
            self.port = _free_port()
            conf.write_text(base + _SERVER_CONF.format(port=self.port, sockdir=self.root))
            r = self._run(
                [self.pg_ctl, "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start"],
                timeout=90,
            )
            if r.returncode == 0:
                self.started = True
                return
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            last = self._tail(log or r.stderr or r.stdout)
            self._run([self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop"], timeout=60)
        raise _Unavailable(f"pg_ctl start failed: {last}")

    def create_db(self) -> None:
        import psycopg2

        try:
            conn = psycopg2.connect(
                host="127.0.0.1", port=self.port, user=DB_USER, dbname="postgres", connect_timeout=10
            )
            try:
                conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute(f"CREATE DATABASE {DB_NAME}")
            finally:
                conn.close()
        except psycopg2.Error as e:
            raise _Unavailable(f"CREATE DATABASE failed: {e}") from e

    def stop(self) -> None:
        if self.started:
            r = self._run(
                [self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop"], timeout=60
            )
            if r.returncode != 0:
                self._run([self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop"], timeout=60)
            self.started = False
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://{DB_USER}@127.0.0.1:{self.port}/{DB_NAME}"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """SQLAlchemy URL of a fresh database on a throwaway PostgreSQL server on 127.0.0.1."""
    cluster = None
    try:
        cluster = _Cluster()
        cluster.init()
        cluster.start()
        cluster.create_db()
    except (_Unavailable, OSError) as e:
        if cluster is not None:
            cluster.stop()
        _unavailable(str(e))
    try:
        yield cluster.url
    finally:
        cluster.stop()
