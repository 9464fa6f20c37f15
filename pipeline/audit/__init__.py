"""The audit job as a library: the job, findings, clusters and the HTML report."""
