"""How hard MLflow calls are tried: our retry budgets, and MLflow's own HTTP retries kept short.

A best-effort update gets a short retry and is then queued (infra/metric_queue.py); a call the
round cannot go on without, and the model registry, retry longer and then raise.
"""

from __future__ import annotations

import os

QUICK = {"attempts": 2, "first_delay": 0.5}  # a best-effort update: a short retry, then queue it
STRICT = {"attempts": 5}  # a call the round cannot go on without (~8 s of waits)
LONG = {"attempts": 8}  # the registry and the final flush: ~30 s of waits


def bound_mlflow_http_retries() -> None:
    """Let our retry loop, not MLflow's, ride out an outage (unless the environment says otherwise).

    MLflow's REST client retries each request itself, by default 7 times with backoff factor 2
    (waits of 4, 8, ... 120 s: minutes), and waits up to 120 s for an answer; during an outage a
    single per-step ``log_batch`` would hold training that long. One immediate retry (for a
    dropped keep-alive connection) and a 10 s timeout make a failed call fail fast, so the
    tracker can queue the update and move on. Raise MLFLOW_HTTP_REQUEST_TIMEOUT for an artifact
    store too slow to take an adapter upload in 10 s.
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
