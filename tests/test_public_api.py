"""pipeline's public API: the names in ``__all__``, each importable, importing nothing heavy."""

from __future__ import annotations

import subprocess
import sys

import pipeline

EXPECTED = {
    "__version__", "Settings", "Secret", "FaceClient", "FaceApi", "StopReason",
    "FaceflowError", "ConfigError", "ManifestError", "ImageProblem", "ApiError", "Status",
    "open_manifest", "EnrollConfig", "EnrollObserver", "RunResult", "enroll", "run_enroll",
    "plan_rerun", "summarize", "AuditConfig", "AuditObserver", "AuditResult", "audit",
    "run_audit", "read_findings",
}


def test_the_exported_names() -> None:
    assert set(pipeline.__all__) == EXPECTED
    assert len(pipeline.__all__) == len(set(pipeline.__all__))
    assert set(pipeline.__all__) - {"__version__"} == set(pipeline._EXPORTS)


def test_every_exported_name_resolves_to_its_definition() -> None:
    from pipeline.enroll.job import EnrollConfig

    for name in pipeline.__all__:
        assert getattr(pipeline, name) is not None, name
    assert pipeline.EnrollConfig is EnrollConfig
    assert issubclass(pipeline.ImageProblem, pipeline.FaceflowError)


def test_importing_pipeline_loads_no_heavy_module() -> None:
    code = ("import sys, pipeline; "
            "print(','.join(m for m in ('aiohttp', 'pyarrow', 'pandas', 'numpy', 'click') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == ""
