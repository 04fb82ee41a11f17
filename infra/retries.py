"""Which failures Prefect retries: the transient ones (a storage or network hiccup), not bugs.

Stage tasks take ``**TRANSIENT_RETRIES``; a retry reruns the whole task, which is safe
because a stage's artifacts are committed whole or not at all.
"""

from __future__ import annotations

from typing import Any


def _transient_errors() -> tuple[type[BaseException], ...]:
    from infra.s3_store import ArtifactStoreError

    errors: list[type[BaseException]] = [ArtifactStoreError, ConnectionError, TimeoutError]
    try:
        import httpx

        errors.append(httpx.TransportError)
    except ImportError:
        pass
    try:
        import requests  # MLflow's client talks to a tracking server through it

        errors.extend([requests.exceptions.ConnectionError, requests.exceptions.Timeout])
    except ImportError:
        pass
    return tuple(errors)


def is_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry only when the failure was a transient error."""
    try:
        error = state.result(raise_on_failure=False)
    except Exception:
        return False
    return isinstance(error, _transient_errors())


TRANSIENT_RETRIES: dict[str, Any] = {"retries": 2, "retry_delay_seconds": [2, 10], "retry_condition_fn": is_transient}
