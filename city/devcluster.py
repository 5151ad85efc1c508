"""A throwaway PostgreSQL cluster for the demo, the tests and the benchmarks.

``initdb`` into a new temporary directory, ``pg_ctl start`` on a unix socket in that directory
(no TCP port: nothing outside this machine reaches it), one database ``city``; ``remove()``
stops it and deletes the directory. Needs Debian's ``postgresql`` package (``make deps``).
As root the server runs as the ``postgres`` user (PostgreSQL refuses to run as root).

A city runs its own PostgreSQL; this module is never used in production.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from city.log import warn

DATABASE = "city"
SUPERUSER = "city"
PORT = 5432  # the socket file's name (.s.PGSQL.5432); there is no TCP listener


def find_bindir() -> Path:
    """The directory of ``initdb`` and ``pg_ctl``: Debian keeps them out of PATH."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise RuntimeError(
        "PostgreSQL's server is not installed: run `make deps` (or `apt-get install -y postgresql`)"
    )


class Cluster:
    """One throwaway cluster; ``dsn`` connects to its ``city`` database."""

    def __init__(self, durable: bool = True, max_connections: int = 100) -> None:
        self.bindir = find_bindir()
        self.dir = Path(tempfile.mkdtemp(prefix="gasguard-pg-"))
        self.data = self.dir / "data"
        self.logfile = self.dir / "postgres.log"
        self.durable = durable
        self.max_connections = max_connections
        self._user: tuple[int, int] | None = None
        if os.geteuid() == 0:
            try:
                entry = pwd.getpwnam("postgres")
            except KeyError:
                entry = pwd.getpwnam("nobody")
            self._user = (entry.pw_uid, entry.pw_gid)
            os.chown(self.dir, *self._user)
        os.chmod(self.dir, 0o755)  # the socket in it must be reachable by the tests' user

    @property
    def dsn(self) -> str:
        return f"host={self.dir} port={PORT} user={SUPERUSER} dbname={DATABASE}"

    def _run(self, *argv: str) -> None:
        cmd = list(argv)
        if self._user is not None:
            uid, gid = self._user
            cmd = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv[:2])} failed ({done.returncode}): "
                f"{(done.stderr or done.stdout).strip()[-2000:]}\n{self.log_tail()}"
            )

    def create(self) -> Cluster:
        """initdb, start, create the database. Returns self."""
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-instructions",
        )
        settings = [
            "listen_addresses = ''",
            f"unix_socket_directories = '{self.dir}'",
            f"port = {PORT}",
            f"max_connections = {self.max_connections}",
            "shared_buffers = 128MB",
        ]
        if not self.durable:
            # Tests only: nothing here must survive a crash of the machine.
            settings += ["fsync = off", "synchronous_commit = off", "full_page_writes = off"]
        with (self.data / "postgresql.conf").open("a", encoding="utf-8") as f:
            f.write("\n".join(settings) + "\n")
        self.start()
        self._run(
            str(self.bindir / "createdb"),
            "-h",
            str(self.dir),
            "-p",
            str(PORT),
            "-U",
            SUPERUSER,
            DATABASE,
        )
        return self

    def _pg_ctl(self, *args: str) -> None:
        """pg_ctl on this cluster, waiting (at most 60 s) until it is done."""
        data = ["-D", str(self.data), "-l", str(self.logfile)]
        self._run(str(self.bindir / "pg_ctl"), *data, "-w", "-t", "60", *args)

    def start(self) -> None:
        self._pg_ctl("start")

    def stop(self, mode: str = "fast") -> None:
        self._pg_ctl("-m", mode, "stop")

    def restart(self) -> None:
        self._pg_ctl("-m", "fast", "restart")

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def remove(self) -> None:
        """Stop the server (if it runs) and delete everything."""
        if self.running:
            try:
                self.stop("immediate")
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                warn("devcluster.stop_failed", error=str(e)[:300])
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
