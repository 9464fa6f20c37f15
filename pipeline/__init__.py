"""faceflow: bulk face enrollment and auditing against the Baidu Face API (v2 and v3).

The library never imports Click and never prints; ``jobs/`` does that. The names in
:data:`__all__` are the public API; each is imported on first use, so ``import
pipeline`` stays cheap (``faceflow --help`` loads neither aiohttp nor pyarrow)::

    from pipeline import EnrollConfig, Settings, enroll
    result = enroll(EnrollConfig(manifest=Path("members.csv"), settings=Settings.from_env(),
                                 group="staff"))
    print(result.counts, result.stop_reason)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    # connecting
    "Settings": "pipeline.client.config",
    "Secret": "pipeline.client.config",
    "FaceClient": "pipeline.client.faceclient",
    # the job frame
    "FaceApi": "pipeline.frame.faceapi",
    "StopReason": "pipeline.frame.stop",
    # errors
    "FaceflowError": "pipeline.api.errors",
    "ConfigError": "pipeline.api.errors",
    "ManifestError": "pipeline.api.errors",
    "ImageProblem": "pipeline.api.errors",
    "ApiError": "pipeline.api.errors",
    # runs
    "Status": "pipeline.runs.reasons",
    "open_manifest": "pipeline.runs.manifest",
    # enroll
    "EnrollConfig": "pipeline.enroll.config",
    "EnrollObserver": "pipeline.enroll.events",
    "RunResult": "pipeline.enroll.events",
    "enroll": "pipeline.enroll.job",
    "run_enroll": "pipeline.enroll.job",
    "plan_rerun": "pipeline.enroll.rerun",
    "summarize": "pipeline.enroll.report",
    # audit
    "AuditConfig": "pipeline.audit.config",
    "AuditObserver": "pipeline.audit.job",
    "AuditResult": "pipeline.audit.job",
    "audit": "pipeline.audit.job",
    "run_audit": "pipeline.audit.job",
    "read_findings": "pipeline.audit.outputs",
}

__all__ = [  # the names of _EXPORTS (a test checks the two agree)
    "__version__",
    "Settings", "Secret", "FaceClient", "FaceApi", "StopReason",
    "FaceflowError", "ConfigError", "ManifestError", "ImageProblem", "ApiError",
    "Status", "open_manifest",
    "EnrollConfig", "EnrollObserver", "RunResult", "enroll", "run_enroll", "plan_rerun",
    "summarize",
    "AuditConfig", "AuditObserver", "AuditResult", "audit", "run_audit", "read_findings",
]

if TYPE_CHECKING:
    from pipeline.api.errors import (
        ApiError,
        ConfigError,
        FaceflowError,
        ImageProblem,
        ManifestError,
    )
    from pipeline.audit.config import AuditConfig
    from pipeline.audit.job import AuditObserver, AuditResult, audit, run_audit
    from pipeline.audit.outputs import read_findings
    from pipeline.client.config import Secret, Settings
    from pipeline.client.faceclient import FaceClient
    from pipeline.enroll.config import EnrollConfig
    from pipeline.enroll.events import EnrollObserver, RunResult
    from pipeline.enroll.job import enroll, run_enroll
    from pipeline.enroll.report import summarize
    from pipeline.enroll.rerun import plan_rerun
    from pipeline.frame.faceapi import FaceApi
    from pipeline.frame.stop import StopReason
    from pipeline.runs.manifest import open_manifest
    from pipeline.runs.reasons import Status


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next access skips __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
