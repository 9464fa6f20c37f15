"""The enroll job as a library: the runner (``job``), the quality gate (``gate``), the report."""
