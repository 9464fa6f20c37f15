"""The PostgreSQL helpers: URL handling, the local cluster the tests run on."""

from __future__ import annotations

import pytest

from pipeline.postgres import PostgresUnavailable, connect, is_postgres_url, redact


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://app:s3cret@db.example:5432/faces", "postgresql://app:***@db.example:5432/faces"),
    ("postgresql://app@/faces?host=/run/pg", "postgresql://app@/faces?host=/run/pg"),
    ("postgres://u:p@h/d?sslmode=require", "postgres://u:***@h/d?sslmode=require"),
], ids=["password", "socket", "query"])
def test_redact_hides_only_the_password(url: str, shown: str) -> None:
    assert redact(url) == shown
    assert is_postgres_url(url)


def test_connect_refuses_other_urls_and_names_no_password() -> None:
    with pytest.raises(PostgresUnavailable, match="not a postgresql"):
        connect("redis://localhost")
    with pytest.raises(PostgresUnavailable) as caught:
        connect("postgresql://app:s3cret@/faces?host=/nonexistent-socket-dir", timeout=2)
    assert "s3cret" not in str(caught.value)
    assert "app:***@" in str(caught.value)


def test_the_test_server_has_pgvector_and_a_private_schema(pg_url: str) -> None:
    with connect(pg_url) as conn:
        version = conn.execute(
            "SELECT extversion FROM pg_extension WHERE extname='vector'").fetchone()
        schema = conn.execute("SELECT current_schema()").fetchone()
        conn.execute("CREATE TABLE probe (x int)")
        tables = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname=current_schema()").fetchone()
    assert version is not None and tuple(map(int, version[0].split(".")[:2])) >= (0, 7)
    assert schema is not None and schema[0].startswith("t")
    assert tables == (1,)


def test_a_cluster_in_a_relative_folder_starts(pg_url: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """`faceflow demo-scale` runs one in runs/... relative to the current folder (pg_url:
    skipped, with the reason, where no cluster can start at all)."""
    import shutil
    import tempfile
    from pathlib import Path

    from pipeline.postgres import LocalCluster

    base = Path(tempfile.mkdtemp(prefix="ffrel-"))  # under /tmp: the cluster user can enter
    base.chmod(0o755)
    monkeypatch.chdir(base)
    try:
        with LocalCluster(Path("runs") / "pg", fsync=False) as cluster:
            assert cluster.folder == base / "runs" / "pg"
            with connect(cluster.url) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        monkeypatch.undo()
        shutil.rmtree(base, ignore_errors=True)
