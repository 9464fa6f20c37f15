"""``faceflow demo``: the local engine, a manifest of sample photos and degraded variants, enroll.

Everything runs on this machine: the engine listens on 127.0.0.1 (a random
port) with a fresh face library under the demo folder. The sample photos are
the public-domain ones fetched into data/samples by ``make setup``; the
degraded variants (blurred, dark, turned, cropped, tiny, two faces, corrupt,
text named .jpg) are generated with Pillow into the demo folder.
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from jobs.enroll import ConfigProblem, execute
from pipeline.runs.outcomes import SUCCESS_STATUSES

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "data" / "samples"

#: (uid, sample file, what we expect a careful service to say)
GOOD_SAMPLES = [
    ("obama", "obama_01.jpg"), ("obama", "obama_02.jpg"), ("obama", "obama_03.jpg"),
    ("biden", "biden_01.jpg"), ("astronaut", "astronaut.png"), ("obama_rgba", "obama_02_rgba.png"),
    ("obama_partial", "obama_partial_face.jpg"), ("obama_partial2", "obama_partial_face2.jpg"),
    ("cameraman", "cameraman.png"), ("cat", "no_face_cat.png"), ("coffee", "no_face_coffee.png"),
]


@dataclass(frozen=True, slots=True)
class DemoRow:
    uid: str
    image: str
    user_info: str


def _variants(images: Path, obama: Path, biden: Path, box: Any) -> list[DemoRow]:
    """Write the degraded variants of obama_01 into ``images``; one manifest row each."""
    from PIL import Image  # noqa: PLC0415

    from pipeline import variants as v  # noqa: PLC0415

    base = Image.open(obama).convert("RGB")
    other = Image.open(biden).convert("RGB")
    made = {
        "blurred.jpg": v.to_bytes(v.blurred(base, 6)),
        "dark.jpg": v.to_bytes(v.darkened(base, 0.12)),
        "turned.jpg": v.to_bytes(v.turned(base, box)),
        "cropped.jpg": v.to_bytes(v.cropped_through_face(base, box)),
        "tiny.jpg": v.to_bytes(v.tiny(base, 90)),
        "mouth_covered.jpg": v.to_bytes(v.mouth_covered(base, box)),
        "two_faces.jpg": v.to_bytes(v.two_faces(base, other)),
        "corrupt.jpg": v.corrupt_jpeg_bytes(v.to_bytes(base)),
        "text_as.jpg": v.text_as_jpg(),
    }
    rows = []
    for name, data in made.items():
        (images / name).write_bytes(data)
        rows.append(DemoRow(f"variant_{Path(name).stem}", f"images/{name}", f"generated: {name}"))
    return rows


def _venv_commands() -> tuple[str, str]:
    """python and faceflow as a user can type them here: the venv's, relative when under cwd."""
    bindir = Path(sys.executable).parent
    try:
        bindir = bindir.relative_to(Path.cwd())
    except ValueError:
        pass
    return str(bindir / "python"), str(bindir / "faceflow")


def build_manifest(folder: Path, box: Any) -> Path:
    """Copy nothing: sample rows point at data/samples; variants are written to folder/images."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = [DemoRow(uid, str(SAMPLES / name), f"sample {name}") for uid, name in GOOD_SAMPLES
            if (SAMPLES / name).exists()]
    rows += _variants(images, SAMPLES / "obama_01.jpg", SAMPLES / "biden_01.jpg", box)
    rows += [
        DemoRow("bad uid!", str(SAMPLES / "biden_01.jpg"), "a uid with a space and a '!'"),
        DemoRow("obama", str(SAMPLES / "obama_01.jpg"), "the first row again (duplicate)"),
        DemoRow("ghost", "images/missing.jpg", "a file that does not exist"),
    ]
    path = folder / "manifest.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["uid", "image", "user_info"])
        writer.writerows([r.uid, r.image, r.user_info] for r in rows)
    return path


def _face_box(settings: Any, image: Path) -> Any:
    """The face box of ``image`` as the engine sees it (for the crop/turn/mouth variants)."""
    import asyncio  # noqa: PLC0415

    from pipeline.client.faceclient import FaceClient  # noqa: PLC0415

    async def detect() -> Any:
        async with FaceClient(settings) as client:
            result = await client.detect(image.read_bytes())
            return result.faces[0].location

    return asyncio.run(detect())


def rows_table(run_dir: Path) -> Table:
    """One line per manifest row: image, status, reasons."""
    from pipeline.runs.outcomes import OUTCOME_SCHEMA  # noqa: PLC0415
    from pipeline.runs.rundir import RunDir  # noqa: PLC0415

    records = RunDir(run_dir).read_records(
        OUTCOME_SCHEMA, ["row", "uid", "image", "status", "reasons"]).to_pylist()
    table = Table(title="every row", title_justify="left")
    for col in ("row", "uid", "image", "status", "reasons"):
        table.add_column(col)
    for r in sorted(records, key=lambda r: r["row"]):
        style = "green" if r["status"] in SUCCESS_STATUSES else "red"
        table.add_row(str(r["row"]), r["uid"] or "", Path(r["image"] or "").name,
                      f"[{style}]{r['status']}[/]", ", ".join(r["reasons"]))
    return table


@click.command(epilog="""\b
Examples:
  faceflow demo
  faceflow demo --dir /tmp/faceflow-demo --concurrency 2
  faceflow demo --api v3""")
@click.option("--dir", "base", type=click.Path(path_type=Path, file_okay=False),
              default=Path("demo-runs"), show_default=True,
              help="Folder for the demo (engine data, images, manifest, run).")
@click.option("--concurrency", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--api", type=click.Choice(("v2", "v3")), default="v2", show_default=True,
              help="The protocol the demo enrolls with (the engine serves both).")
def demo(base: Path, concurrency: int, api: str) -> None:
    """Start the local engine, enroll the sample photos and degraded variants, show the result."""
    from pipeline.client.config import Secret, Settings  # noqa: PLC0415
    from pipeline.engine.server import EngineServer  # noqa: PLC0415
    from pipeline.enroll.config import EnrollConfig  # noqa: PLC0415

    if not (SAMPLES / "obama_01.jpg").exists():
        raise ConfigProblem(f"no sample photos in {SAMPLES}: run `make setup` first")
    folder = (base / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")).resolve()
    console = Console(stderr=True)
    console.print(f"Demo folder: {folder}", highlight=False)
    with EngineServer(folder / "engine") as server:
        settings = Settings(endpoint=server.url, api_key=Secret(server.api_key),
                            secret_key=Secret(server.secret_key))
        console.print(f"Local engine on {server.url}", highlight=False)
        manifest = build_manifest(folder, _face_box(settings, SAMPLES / "obama_01.jpg"))
        config = EnrollConfig(manifest=manifest, settings=settings, group="demo", api=api,
                              concurrency=concurrency, run_dir=folder / "run")
        result = execute(config, "faceflow demo  # (the demo starts over each time)",
                         console=console)
    # Not a terminal (e.g. piped into the README): wide enough that rows stay on one line.
    out = Console() if sys.stdout.isatty() else Console(width=110)
    out.print(rows_table(result.run_dir))
    python, faceflow = _venv_commands()
    lines = [
        "Read the outcomes with pandas:",
        f"  {python} -c \"import pandas as pd; print(pd.read_parquet('{result.outcomes_dir}')"
        "[['row', 'uid', 'status', 'reasons']])\"",
        f"HTML report: {faceflow} report {result.run_dir} --html report.html",
    ]
    for line in lines:
        out.print(line, highlight=False, soft_wrap=True)
    sys.exit(0)
