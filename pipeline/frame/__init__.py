"""The one job frame that enroll, audit and the jobs to come are built on.

- :mod:`~pipeline.frame.faceapi`: :class:`FaceApi`, the calls a job makes of a face
  service, and the factory that opens a client;
- :mod:`~pipeline.frame.stop`: :class:`StopReason` and :class:`StopRun`, how a job
  stops early (quota, auth, interrupted) and says why;
- :mod:`~pipeline.frame.runner`: :class:`Runner`, the bounded-concurrency loop over
  rows or probes;
- :mod:`~pipeline.frame.run`: holding a run directory for a session.

The library returns a stop reason; ``jobs/`` alone maps it to an exit code.
"""

from pipeline.frame.faceapi import (
    ClientFactory,
    FaceApi,
    Qps,
    default_client_factory,
    factory_options,
)
from pipeline.frame.run import next_session, open_held
from pipeline.frame.runner import Runner, Stopped, outage_pause
from pipeline.frame.stop import (
    STOPPING_ERRORS,
    StopReason,
    StopRun,
    as_stop,
    disk_message,
    stop_for,
)

__all__ = [
    "STOPPING_ERRORS", "ClientFactory", "FaceApi", "Qps", "Runner", "StopReason", "StopRun",
    "Stopped", "as_stop", "default_client_factory", "disk_message", "factory_options",
    "next_session", "open_held", "outage_pause", "stop_for",
]
