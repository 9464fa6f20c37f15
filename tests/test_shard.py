"""Sharded enrollment and `faceflow merge`, against the protocol double.

Three shard runs of one manifest, each an ordinary run in its own folder, then merged;
resume refuses another split; merge refuses shards that do not fit together.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image
from support.doubles import ProtocolDouble, double, error  # noqa: F401 - double: fixture

from jobs.cli import main
from pipeline.api.errors import ConfigError
from pipeline.enroll.job import EnrollConfig, run_enroll, shard_rows
from pipeline.enroll.merge import merge_shards
from pipeline.enroll.report import summarize

ROWS = 10


def _manifest(folder: Path, rows: int = ROWS, missing: int | None = 4) -> Path:
    Image.new("RGB", (240, 300), (180, 140, 120)).save(folder / "face.jpg", quality=90)
    lines = ["uid,image"] + [f"u{i},{'gone.jpg' if i == missing else 'face.jpg'}"
                             for i in range(rows)]
    path = folder / "big.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def _config(double: ProtocolDouble, manifest: Path, run_dir: Path,  # noqa: F811
            shard: tuple[int, int] | None, **kw: object) -> EnrollConfig:
    return EnrollConfig(manifest=manifest, settings=double.settings(), group="g",
                        run_dir=run_dir, shard=shard, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(("rows", "n"), [(10, 3), (7, 7), (3, 5), (0, 2)])
def test_shard_ranges_cover_every_row_once(rows: int, n: int) -> None:
    ranges = [shard_rows(rows, (k, n)) for k in range(n)]
    assert [r for rng in ranges for r in rng] == list(range(rows))
    assert max(map(len, ranges)) - min(map(len, ranges)) <= 1


async def test_three_shards_enroll_their_rows_and_merge(
    double: ProtocolDouble, tmp_path: Path  # noqa: F811
) -> None:
    manifest, big = _manifest(tmp_path), tmp_path / "runs" / "big"
    for k in range(3):
        result = await run_enroll(_config(double, manifest, big / f"shard-{k:02d}", (k, 3)))
        assert result.total_rows == len(shard_rows(ROWS, (k, 3))) and result.remaining == 0
        info = json.loads((big / f"shard-{k:02d}" / "run.json").read_text())
        assert info["options"]["shard"] == f"{k}/3"
    uids = sorted(c.form["uid"] for c in double.calls("add"))
    assert uids == sorted(f"u{i}" for i in range(ROWS) if i != 4)  # each row once
    merged = merge_shards(big)
    assert (merged.shards, merged.rows, merged.failures) == (3, ROWS, 1)
    parent = json.loads((big / "run.json").read_text())
    assert [s["shard"] for s in parent["options"]["shards"]] == ["0/3", "1/3", "2/3"]
    assert sum(parent["counts"].values()) == ROWS
    failures = (big / "failures.csv").read_text().splitlines()
    assert len(failures) == 2 and failures[1].startswith("u4,")
    assert summarize(big).rows == ROWS and (big / "report.html").exists()
    assert merge_shards(big).rows == ROWS  # merging again rewrites the same result


async def test_resume_refuses_another_split(double: ProtocolDouble, tmp_path: Path  # noqa: F811
                                            ) -> None:
    manifest, run_dir = _manifest(tmp_path), tmp_path / "shard-00"
    await run_enroll(_config(double, manifest, run_dir, (0, 3)))
    for other in ((0, 4), (1, 3), None):
        with pytest.raises(ConfigError, match="same split"):
            await run_enroll(_config(double, manifest, run_dir, other))
    again = await run_enroll(_config(double, manifest, run_dir, (0, 3)))
    assert again.remaining == 0 and again.session_counts == {}


async def test_merge_lists_what_does_not_fit(double: ProtocolDouble, tmp_path: Path  # noqa: F811
                                             ) -> None:
    manifest, big = _manifest(tmp_path), tmp_path / "big"
    await run_enroll(_config(double, manifest, big / "a", (0, 3)))
    await run_enroll(_config(double, manifest, big / "b", (2, 3), mode="upsert"))
    other = tmp_path / "other"
    other.mkdir()
    await run_enroll(_config(double, _manifest(other, rows=6), big / "c", (2, 3)))
    with pytest.raises(ConfigError) as caught:
        merge_shards(big)
    text = str(caught.value)
    assert "missing shards of /3: 1" in text and "different manifests" in text
    assert "different options" in text and "mode" in text
    assert "shard 2/3 is in 2 folders" in text
    assert not (big / "run.json").exists()


async def test_merge_refuses_an_unfinished_shard(double: ProtocolDouble, tmp_path: Path  # noqa: F811
                                                 ) -> None:
    manifest, big = _manifest(tmp_path, missing=None), tmp_path / "big"
    await run_enroll(_config(double, manifest, big / "s0", (0, 2)))
    double.script("detect", error(17))  # the daily quota runs out in shard 1
    stopped = await run_enroll(_config(double, manifest, big / "s1", (1, 2), concurrency=1))
    assert stopped.stop_reason == "quota" and stopped.remaining > 0
    with pytest.raises(ConfigError, match="s1: not finished"):
        merge_shards(big)


def test_cli_checks_the_shard_option_and_merge_folder(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path)
    runner = CliRunner()
    bad = runner.invoke(main, ["enroll", str(manifest), "--group", "g", "--shard", "3/3",
                               "--endpoint", "http://127.0.0.1:9", "--api-key", "a",
                               "--secret-key", "b"])
    assert bad.exit_code == 2 and "0 <= K < N" in bad.output
    empty = runner.invoke(main, ["merge", str(tmp_path)])
    assert empty.exit_code == 2 and "holds no shard runs" in empty.output
