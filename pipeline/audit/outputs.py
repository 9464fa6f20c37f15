"""The audit's outputs: ``findings.parquet`` and ``clusters.parquet``, derived again from
every probe record at the end of each session, and read back by reports."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.audit.clusters import CLUSTER_SCHEMA, Cluster
from pipeline.audit.findings import (
    FINDING_SCHEMA,
    AuditImage,
    Finding,
    ProbeRecord,
    derive_findings,
    records_table,
    table_records,
)
from pipeline.runs.rundir import (
    RunDir,
    utc_now,
    write_table_atomic,
)

FINDINGS_FILE, CLUSTERS_FILE = "findings.parquet", "clusters.parquet"

def write_findings(
    rundir: RunDir, plan: Sequence[AuditImage], records: Mapping[int, ProbeRecord],
    threshold: float, run_id: str,
) -> tuple[list[Finding], list[Cluster]]:
    """Derive findings and clusters and write ``findings.parquet`` and ``clusters.parquet``."""
    findings, clusters = derive_findings(plan, records, threshold, run_id, utc_now())
    write_table_atomic(rundir.path / FINDINGS_FILE, records_table(findings, FINDING_SCHEMA))
    write_table_atomic(rundir.path / CLUSTERS_FILE, records_table(clusters, CLUSTER_SCHEMA))
    return findings, clusters


def read_findings(run_dir: Path) -> list[Finding]:
    """The findings of a finished audit, in file order."""
    table = pq.read_table(Path(run_dir) / FINDINGS_FILE, schema=FINDING_SCHEMA)
    return table_records(table, Finding)
