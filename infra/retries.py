"""Retry the network call, not the stage: backoff around the calls that touch a server.

A call to S3, MLflow, the Prefect API or a judge API that fails with a transient error
(refused or reset connection, timeout, 5xx, throttling) is tried again after an
exponentially growing, jittered delay; any other error is raised at once. Work that only
runs locally (generation, training) is never rerun because a server hiccuped.

    @retrying("S3 get")
    def get(self, key): ...

    call_with_retries("S3 put", client.put_object, Bucket=bucket, Key=key, Body=body)

Importing this module imports nothing heavy: the client libraries whose errors it knows
(botocore, requests, httpx, MLflow, openai) are imported inside ``is_transient``, and only
when already loaded, since an error can only come from a library that is.
"""

from __future__ import annotations

import errno
import functools
import logging
import random
import re
import socket
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
logger = logging.getLogger("flywheel.retries")

# OSErrors that mean the network, not the request, failed.
_NETWORK_ERRNOS = {
    errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE, errno.ETIMEDOUT,
    errno.ENETDOWN, errno.ENETUNREACH, errno.ENETRESET, errno.EHOSTDOWN, errno.EHOSTUNREACH,
}
# Error codes S3 (and S3-compatible stores) answer when the request may simply be sent again.
_RETRYABLE_S3_CODES = {
    "SlowDown", "RequestTimeout", "RequestTimeoutException", "InternalError", "ServiceUnavailable",
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled", "RequestLimitExceeded",
    "TooManyRequestsException", "PriorRequestNotComplete",
}
# MLflow error codes of a server that is overloaded or briefly unable to answer.
_RETRYABLE_MLFLOW_CODES = {"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "INTERNAL_ERROR", "DEADLINE_EXCEEDED"}


def _retryable_status(status: Any) -> bool:
    return isinstance(status, int) and (status >= 500 or status in (408, 429))


def _loaded(module: str) -> Any:
    """The module if something in this process already imported it, else None."""
    return sys.modules.get(module)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the errors it was raised from. MLflow's REST client wraps a failed request in
    an MlflowException raised inside ``except`` but without ``from``, so for MLflow errors the
    implicit context is followed too."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        follow_context = type(exc).__module__.startswith("mlflow") and not exc.__suppress_context__
        exc = exc.__cause__ or (exc.__context__ if follow_context else None)


def is_transient(exc: BaseException) -> bool:
    """True when ``exc`` (or an error it was raised from) is a network failure that a retry
    may cure: a refused/reset connection, a timeout, a 5xx or 429 answer, S3 throttling."""
    return any(_transient_here(e) for e in _chain(exc))


def _transient_here(exc: BaseException) -> bool:
    if isinstance(exc, socket.gaierror):  # DNS: only "try again later" is temporary
        return exc.errno == socket.EAI_AGAIN
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, OSError) and exc.errno in _NETWORK_ERRNOS:
        return True
    return any(check(exc) for check in (_http_client, _urllib3, _botocore, _requests, _httpx, _mlflow, _openai))


def _http_client(exc: BaseException) -> bool:
    import http.client

    return isinstance(exc, (http.client.IncompleteRead, http.client.BadStatusLine))


def _urllib3(exc: BaseException) -> bool:
    urllib3 = _loaded("urllib3")
    if urllib3 is None:
        return False
    errors = urllib3.exceptions
    return isinstance(exc, (errors.ProtocolError, errors.NewConnectionError, errors.TimeoutError))


def _botocore(exc: BaseException) -> bool:
    if _loaded("botocore") is None:
        return False
    from botocore import exceptions as errors

    if isinstance(exc, (errors.EndpointConnectionError, errors.ConnectTimeoutError, errors.ReadTimeoutError,
                        errors.ConnectionClosedError, errors.ConnectionError, errors.ResponseStreamingError)):
        return True
    if isinstance(exc, errors.ClientError):
        code = exc.response.get("Error", {}).get("Code")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code in _RETRYABLE_S3_CODES or _retryable_status(status)
    return False


def _requests(exc: BaseException) -> bool:
    if _loaded("requests") is None:
        return False
    from requests import exceptions as errors

    if isinstance(exc, (errors.ConnectionError, errors.Timeout, errors.ChunkedEncodingError, errors.RetryError)):
        return True  # RetryError: urllib3 gave up on repeated 5xx/429 answers
    if isinstance(exc, errors.HTTPError) and exc.response is not None:
        return _retryable_status(exc.response.status_code)
    return False


def _httpx(exc: BaseException) -> bool:
    if _loaded("httpx") is None:
        return False
    import httpx

    if isinstance(exc, httpx.TransportError):
        return not isinstance(exc, (httpx.UnsupportedProtocol, httpx.LocalProtocolError))
    if isinstance(exc, httpx.HTTPStatusError):  # the Prefect client's PrefectHTTPStatusError among them
        return _retryable_status(exc.response.status_code)
    return False


def _mlflow(exc: BaseException) -> bool:
    """MLflow over HTTP: a server's JSON error (RestException) with a retryable code, or a
    non-JSON 5xx/429 answer (a proxy's 502, say), which MLflow words as "failed with error
    code N". A refused connection arrives as an MlflowException raised while handling
    requests' ConnectionError, which ``_chain`` follows."""
    if _loaded("mlflow") is None:
        return False
    from mlflow.exceptions import MlflowException, RestException

    if isinstance(exc, RestException):
        return exc.error_code in _RETRYABLE_MLFLOW_CODES or _retryable_status(exc.get_http_status_code())
    if isinstance(exc, MlflowException):
        message = str(exc.message) if hasattr(exc, "message") else str(exc)
        return any(f"failed with error code {code}" in message for code in ("429", "500", "502", "503", "504"))
    return False


def _openai(exc: BaseException) -> bool:
    openai = _loaded("openai")
    if openai is None:
        return False
    if isinstance(exc, openai.APIConnectionError):  # APITimeoutError among them
        return True
    return isinstance(exc, openai.APIStatusError) and _retryable_status(exc.status_code)


def backoff_delays(attempts: int, first_delay: float, max_delay: float) -> list[float]:
    """The waits between ``attempts`` tries: doubling from ``first_delay``, capped at
    ``max_delay``, each jittered to 50-100% so clients that failed together do not return
    together ("equal jitter")."""
    delays = [min(max_delay, first_delay * 2**i) for i in range(max(attempts - 1, 0))]
    return [d * random.uniform(0.5, 1.0) for d in delays]


def call_with_retries(what: str, fn: Callable[..., T], *args: Any, attempts: int = 5, first_delay: float = 0.5,
                      max_delay: float = 8.0, within_s: float | None = None, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, tried up to ``attempts`` times while it fails transiently, or,
    with ``within_s``, for as long as the next try would start within ``within_s`` seconds of
    the first (an outage of a known length is ridden out, however many tries it takes).

    ``what`` names the call in the warning logged before each retry ("S3 put", "MLflow
    log_batch"); the warning carries the error's type and message, never the arguments.
    A non-transient error, or the last attempt's error, is raised as is.
    """
    started = time.monotonic()
    delays = backoff_delays(attempts, first_delay, max_delay)
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if within_s is None:
                delay = delays[attempt - 1] if attempt < attempts else None
                budget = f"attempt {attempt} of {attempts}"
            else:
                delay = backoff_delays(attempt + 1, first_delay, max_delay)[-1]
                delay = delay if time.monotonic() + delay - started <= within_s else None
                budget = f"attempt {attempt}, for up to {within_s:.0f} s"
            if delay is None or not is_transient(exc):
                raise
            logger.warning("%s failed (%s), retrying in %.1f s: %s: %s", what, budget, delay, type(exc).__name__, _short(exc))
            time.sleep(delay)


def retrying(what: str, attempts: int = 5, first_delay: float = 0.5, max_delay: float = 8.0):
    """Decorator form of ``call_with_retries``: ``@retrying("S3 get")``."""

    def decorate(fn: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> T:
            return call_with_retries(what, fn, *args, attempts=attempts, first_delay=first_delay,
                                     max_delay=max_delay, **kwargs)

        return wrapper

    return decorate


def _short(exc: BaseException, limit: int = 300) -> str:
    """The error's message on one line, without what could be a secret in a URL (user:password@,
    a query string such as a presigned URL's signature)."""
    text = " ".join(str(exc).split())
    text = re.sub(r"(\w+://)[^/@\s]+@", r"\1***@", text)
    text = re.sub(r"(\w+://[^\s?'\"]*)\?[^\s'\"]*", r"\1?***", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."
