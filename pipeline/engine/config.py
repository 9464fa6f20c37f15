"""How to run one engine (:class:`EngineConfig`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.engine.emulation import EmulationConfig


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """How to run one engine. ``token_ttl`` in seconds; ``workers`` model processes."""

    data_dir: Path
    api_key: str
    secret_key: str
    workers: int = 1
    token_ttl: float = 2592000.0
    detector: str = "hog"
    emulation: EmulationConfig = field(default_factory=EmulationConfig)
    #: ``postgresql://...``: the shared faceset (pgstore.py) instead of ``data_dir``'s.
    store_url: str | None = None
    #: Descriptor model (models.MODELS); a faceset holds one model's descriptors.
    model: str = "dlib"
