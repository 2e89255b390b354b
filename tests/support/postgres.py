"""A throwaway PostgreSQL cluster for the test session, and a fresh database per test.

The cluster is the test's own: `initdb` in a temp dir, `pg_ctl` on a free loopback port, trust
authentication, its unix socket in the temp dir. It never touches a server that happens to run
on the machine (5432). As root (CI, this machine) the server runs as an unprivileged user
(`postgres` when the package created it, else `nobody`): initdb and postgres refuse root.

Where the server binaries (or the asyncpg driver) cannot be had, PostgreSQL tests skip with the
reason, except under CI=true, where that is a failure: CI must not pass without testing them.

`db_url` is parametrized over both stores: a test that takes it runs on SQLite and on
PostgreSQL (ids `[sqlite]` / `[postgresql]`; `-m postgres` selects the PostgreSQL ones).
"""

from __future__ import annotations

import glob
import importlib.util
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.broker import HOST, free_port

_BINARIES = ("initdb", "pg_ctl", "postgres", "createdb", "dropdb", "psql")


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and the PostgreSQL tests cannot run: {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL tests skipped: {reason}")


def find_bindir() -> Path | None:
    """The directory with the server binaries: Debian's /usr/lib/postgresql/<v>/bin (newest
    first; it is off PATH), else wherever `initdb` is on PATH."""

    def version(d: str) -> int:
        try:
            return int(Path(d).parent.name.split(".")[0])
        except ValueError:
            return 0

    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(str(Path(on_path).resolve().parent))
    for d in candidates:
        if all(os.access(Path(d) / b, os.X_OK) for b in _BINARIES):
            return Path(d)
    return None


def _server_user() -> str | None:
    """Who runs initdb/postgres: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    return None


class PostgresCluster:
    def __init__(self, bindir: Path, workdir: Path) -> None:
        self.bindir = bindir
        self.workdir = workdir
        self.datadir = workdir / "data"
        self.sockdir = workdir / "sock"
        self.logfile = workdir / "postgres.log"
        self.port = free_port()
        self.host = HOST
        self.user = _server_user()
        self._names = itertools.count(1)

    def _run(self, *args: str, as_server: bool = False, timeout: float = 60) -> str:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if as_server and self.user is not None:
            cmd = ["setpriv", f"--reuid={self.user}", f"--regid={self.user}", "--init-groups", *cmd]
        res = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, cwd=self.workdir, check=False
        )
        if res.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}\n"
                f"{self.log()}"
            )
        return res.stdout

    def start(self) -> None:
        self.sockdir.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            pw = pwd.getpwnam(self.user)
            for p in (self.workdir, self.sockdir):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.datadir),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            as_server=True,
        )
        # a throwaway cluster: durability is the point of other tests (SQLite's FULL sync,
        # kill -9 of the gateway), not of the test server; fsync off saves seconds
        opts = (
            f"-c listen_addresses={self.host} -c port={self.port} "
            f"-c unix_socket_directories={self.sockdir} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.datadir),
            "-l",
            str(self.logfile),
            "-o",
            opts,
            "-w",
            "-t",
            "30",
            "start",
            as_server=True,
        )

    def stop(self) -> None:
        if (self.datadir / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.datadir), "-m", "immediate", "stop", as_server=True)

    def create_database(self) -> str:
        """A fresh, empty database; returns its URL (the form a config file holds)."""
        name = f"t{os.getpid()}_{next(self._names)}"
        self._run("createdb", "-h", self.host, "-p", str(self.port), "-U", "postgres", name)
        return self.url(name)

    def drop_database(self, name: str) -> None:
        self._run(
            "dropdb", "-h", self.host, "-p", str(self.port), "-U", "postgres", "--force", name
        )

    def sql(self, name: str, statement: str) -> str:
        """Run one statement in database `name` (psql), return its unaligned output."""
        return self._run(
            "psql",
            "-h",
            self.host,
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            name,
            "-XtAq",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            statement,
        ).strip()

    def url(self, name: str) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{name}"

    def log(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")[-3000:]
        except OSError:
            return ""


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    if importlib.util.find_spec("asyncpg") is None:
        _unavailable("the asyncpg driver is not installed (pip install -e '.[postgres]')")
    bindir = find_bindir()
    if bindir is None:
        _unavailable(
            "no PostgreSQL server binaries (initdb, pg_ctl, postgres, createdb, dropdb, psql) "
            "under /usr/lib/postgresql/*/bin or on PATH: run `make test` (it installs them), or "
            "`sudo apt-get install -y postgresql`"
        )
    assert bindir is not None
    workdir = Path(tempfile.mkdtemp(prefix="jaa-pg-"))
    cluster = PostgresCluster(bindir, workdir)
    try:
        cluster.start()
        yield cluster
    finally:
        try:
            cluster.stop()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> Iterator[str]:
    """A fresh database in the session's cluster, dropped after the test."""
    url = postgres_cluster.create_database()
    name = url.rsplit("/", 1)[1]
    try:
        yield url
        # the test really ran on PostgreSQL: a config that silently fell back to another store
        # would leave this database empty
        found = postgres_cluster.sql(name, "SELECT to_regclass('schema_migrations') IS NOT NULL")
        assert found == "t", f"the test never migrated its PostgreSQL database {name}"
    finally:
        postgres_cluster.drop_database(name)


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The test's database URL: SQLite in tmp_path, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url
