"""Reading quality thresholds: a TOML file and ``--threshold`` overrides -> :class:`Thresholds`.

The parsing and checking is the gate's (:func:`pipeline.enroll.gate.build_thresholds`,
pure); this module only reads the file, so the gate itself does no I/O.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.api.errors import ConfigError
from pipeline.enroll.gate import Thresholds, build_thresholds

__all__ = ["load_thresholds"]


def load_thresholds(
    path: Path | None = None, overrides: Mapping[str, str] | None = None,
    base: Thresholds | None = None,
) -> Thresholds:
    """Defaults (or ``base``), then the TOML file at ``path``, then ``overrides``
    (``"occlusion.mouth"``).

    Raises :class:`ConfigError` naming the bad key (and listing the valid ones) for an
    unknown key, a value that is not a non-negative number, or an unreadable file.
    """
    doc = _read_toml(Path(path)) if path is not None else None
    return build_thresholds(doc, overrides, base, source=str(path))


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read thresholds file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"thresholds file {path} is not valid TOML: {exc}") from None
