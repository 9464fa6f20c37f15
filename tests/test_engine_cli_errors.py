"""`faceflow engine` on a port in use and on a bad person CSV: one line, exit 2 (issue 17)."""

from __future__ import annotations

import socket
from pathlib import Path

from click.testing import CliRunner

from jobs.cli import main


def test_serve_on_a_port_in_use_is_one_line_exit_2(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = CliRunner().invoke(main, ["engine", "serve", "--port", str(port),
                                        "--data-dir", str(tmp_path / "data")])
    assert out.exit_code == 2, out.output
    assert f"cannot listen on 127.0.0.1:{port}: the port is in use" in out.output
    assert "Traceback" not in out.output and len(out.output.strip().splitlines()) == 1


def test_import_persons_on_a_bad_csv_exits_2(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("id,name\n1,a\n")
    gbk = tmp_path / "gbk.csv"
    gbk.write_bytes("id_card_number,name,photo\n11010519491231002X,张三,a.jpg\n".encode("gbk"))
    for path, needle in ((wrong, "missing columns"), (gbk, "line 2: the text is not UTF-8")):
        out = CliRunner().invoke(main, ["engine", "import-persons", str(path),
                                        "--data-dir", str(tmp_path / "data")])
        assert out.exit_code == 2, out.output
        assert needle in out.output and "Traceback" not in out.output
