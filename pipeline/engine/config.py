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
    #: With ``store_url``: threads running the interfaces off the event loop, each with
    #: its own PostgreSQL connection (requests beyond this many wait their turn). 0 runs
    #: them on the loop with one connection, as before (benchmarks/scale_replicas.py
    #: compares both).
    store_threads: int = 16
