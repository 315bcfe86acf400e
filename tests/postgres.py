"""A real PostgreSQL server for tests: its own cluster on a free loopback port, gone at exit.

Usage, from any test module (the server takes a second or two to start, so share it)::

    from tests.postgres import new_database, postgres_server

    @pytest.fixture(scope="module")
    def postgres_url() -> Iterator[str]:
        with postgres_server() as url:  # skips the test when PostgreSQL is not installed
            yield url

    def test_something(postgres_url: str) -> None:
        url = new_database(postgres_url)  # an empty database of its own, if it wants one

The URL is ``postgresql://postgres:<password>@127.0.0.1:<port>/postgres``: the superuser, with a
password (loopback TCP connections authenticate with SCRAM, as in production), so that code
handling the URL is tested with a secret in it. Debian's server packages (``make test``
installs them: ``apt-get install postgresql``) put the binaries under
``/usr/lib/postgresql/<version>/bin``, off the PATH; other systems have them on the PATH.
PostgreSQL refuses to run as root, and the tests run as root in CI and in the development
containers: then the cluster belongs to the ``postgres`` system user (the package creates it),
its commands run through ``runuser``, and its directory is a fresh one under the system's
temporary directory, since the postgres user cannot enter pytest's (mode 0700, root's).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from glob import glob
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

__all__ = ("new_database", "postgres_server")

_INSTALL_HINT = "`make test` installs Debian's: apt-get install postgresql"
_USER = "postgres"
_START_ATTEMPTS = 3
"""A free port can be taken by someone else between choosing it and the server binding it."""


@contextmanager
def postgres_server() -> Iterator[str]:
    """Start a throwaway PostgreSQL (``pytest.skip`` when it cannot run here) and yield its URL;
    stop it (immediately: nothing in it is worth a clean shutdown) and delete it at exit."""
    bindir = _find_bindir()
    as_user = _run_as()
    directory = Path(tempfile.mkdtemp(prefix="vlm-gateway-postgres-"))
    try:
        data, log = directory / "data", directory / "server.log"
        password = secrets.token_hex(12)
        (directory / "password").write_text(password + "\n")
        if as_user:
            shutil.chown(directory, _USER, _USER)
            shutil.chown(directory / "password", _USER, _USER)
        initdb = subprocess.run(
            [*as_user, str(bindir / "initdb"), "-D", str(data), "-U", _USER,
             f"--pwfile={directory / 'password'}", "--auth-local=trust",
             "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync"],
            cwd=directory, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if initdb.returncode != 0:
            raise RuntimeError(f"initdb failed: {initdb.stderr or initdb.stdout}")
        conf = data / "postgresql.conf"
        settings = conf.read_text()
        for attempt in range(_START_ATTEMPTS):
            port = _free_port()
            # Loopback only, the socket in our directory (not /var/run/postgresql, which may
            # not exist or belong to a system cluster), and no durability: it is thrown away.
            conf.write_text(
                f"{settings}\nlisten_addresses = '127.0.0.1'\nport = {port}\n"
                f"unix_socket_directories = '{directory}'\nfsync = off\n"
                "synchronous_commit = off\nfull_page_writes = off\n"
            )
            started = subprocess.run(
                [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w",
                 "-t", "60", "start"],
                cwd=directory, capture_output=True, text=True, check=False,
            )  # fmt: skip
            if started.returncode == 0:
                break
            if attempt == _START_ATTEMPTS - 1:
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RuntimeError(f"PostgreSQL did not start: {started.stderr}\n{tail}")
        try:
            yield f"postgresql://{_USER}:{password}@127.0.0.1:{port}/postgres"
        finally:
            subprocess.run(
                [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w",
                 "stop"],
                cwd=directory, capture_output=True, check=False,
            )  # fmt: skip
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def new_database(url: str) -> str:
    """Create an empty database on the server at ``url`` (a ``postgres_server`` URL); its URL."""
    name = f"test_{secrets.token_hex(6)}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return f"{url.rsplit('/', 1)[0]}/{name}"


def _find_bindir() -> Path:
    def version(initdb: str) -> tuple[int, ...]:
        number = Path(initdb).parent.parent.name  # /usr/lib/postgresql/<version>/bin/initdb
        return tuple(int(part) for part in number.split(".") if part.isdigit())

    candidates = sorted(glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    initdb = candidates[-1] if candidates else shutil.which("initdb")
    if initdb is None or not (Path(initdb).parent / "pg_ctl").exists():
        pytest.skip(f"PostgreSQL is not installed ({_INSTALL_HINT}); these tests need a real one")
    return Path(initdb).parent


def _run_as() -> list[str]:
    """The prefix that runs a command as the cluster's owner: nothing unless we are root."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(_USER)
    except KeyError:
        pytest.skip(
            f"running as root, and PostgreSQL refuses root: it needs a '{_USER}' system user "
            f"to run as, and there is none ({_INSTALL_HINT}, which creates it)"
        )
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.skip("running as root, and PostgreSQL refuses root: runuser is missing")
    return [runuser, "-u", _USER, "--"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
