"""A throwaway PostgreSQL server for the tests that need one (tune storages, the autotune knowledge base).

Debian's postgresql-15, on a free localhost port; ``tests/conftest.py`` imports the fixtures, so every test
folder can ask for ``postgresql_server`` or ``postgresql_url``.

The cluster lives in a temporary folder owned by the ``postgres`` user
(``initdb`` refuses root, so a root session runs it through ``runuser``),
listens on 127.0.0.1 only, trusts its local connections (nothing but this
machine can reach it) and is stopped and deleted after the session. Where the
server cannot start, a test that needs it skips with the reason, except in CI
(``CI=true``), where it fails: CI installs the package (.ci/run).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid

import pytest


def _bindir() -> str:
    listed = subprocess.run(["dpkg", "-L", "postgresql-15"], capture_output=True, text=True, check=False).stdout
    for line in listed.splitlines():
        if line.endswith("/bin/initdb"):
            return os.path.dirname(line)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("no initdb: the postgresql-15 package is not installed (apt-get install postgresql-15)")
    return os.path.dirname(found[-1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Cluster:
    def __init__(self):
        self.bindir = _bindir()
        self.root = tempfile.mkdtemp(prefix="hamjax-pg-")
        self.data = os.path.join(self.root, "data")
        self.port = _free_port()
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self.prefix = ["runuser", "-u", "postgres", "--"]

    def _run(self, *argv: str) -> None:
        done = subprocess.run(
            [*self.prefix, os.path.join(self.bindir, argv[0]), *argv[1:]],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            tail = " ".join((done.stderr or done.stdout).split())[-400:]
            raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {tail}")

    def start(self) -> str:
        self._run("initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        options = f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off -c max_connections=60"
        self._run(
            "pg_ctl", "-D", self.data, "-o", options, "-l", os.path.join(self.root, "log"), "-w", "-t", "60", "start"
        )
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgresql_server():
    """The URL of a running PostgreSQL server (``postgresql://postgres@127.0.0.1:PORT/postgres``)."""
    cluster = None
    try:
        cluster = _Cluster()
        url = cluster.start()
    except Exception as error:
        if cluster is not None:
            cluster.stop()
        _unavailable(f"PostgreSQL server could not start: {' '.join(str(error).split())}")
    yield url
    cluster.stop()


@pytest.fixture
def postgresql_url(postgresql_server):
    """A fresh, empty database on the session's server; its URL."""
    try:
        import psycopg
    except ImportError as error:  # the tune extra is not installed
        _unavailable(f"psycopg (the tune extra) is not installed: {error}")
    name = "t" + uuid.uuid4().hex[:12]
    with psycopg.connect(postgresql_server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return postgresql_server.rsplit("/", 1)[0] + "/" + name
