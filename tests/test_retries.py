"""The retry helper: transient network errors are retried with backoff, anything else is raised at once."""

from __future__ import annotations

import errno
import logging
import socket
import subprocess
import sys

import pytest

from infra.retries import backoff_delays, call_with_retries, is_transient, retrying


class Flaky:
    """Fails ``failures`` times with ``error``, then returns "done"."""

    def __init__(self, failures: int, error: BaseException):
        self.failures, self.error, self.calls = failures, error, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "done", args, kwargs


def test_a_call_failing_twice_with_a_connection_error_is_retried_until_it_succeeds(caplog):
    flaky = Flaky(2, ConnectionError("connection refused"))
    with caplog.at_level(logging.WARNING, logger="flywheel.retries"):
        result = call_with_retries("S3 put", flaky, "a", first_delay=0.01, key="k")
    assert result == ("done", ("a",), {"key": "k"})
    assert flaky.calls == 3
    retries = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(retries) == 2 and all("S3 put" in r.getMessage() and "connection refused" in r.getMessage() for r in retries)


def test_a_non_transient_error_is_raised_at_once():
    flaky = Flaky(1, ValueError("bad request"))
    with pytest.raises(ValueError):
        call_with_retries("S3 put", flaky, first_delay=0.01)
    assert flaky.calls == 1


def test_the_last_attempts_error_is_raised():
    flaky = Flaky(10, TimeoutError("read timed out"))
    with pytest.raises(TimeoutError):
        call_with_retries("judge API", flaky, attempts=3, first_delay=0.01)
    assert flaky.calls == 3


def test_the_decorator_retries_a_method():
    class Store:
        def __init__(self):
            self.flaky = Flaky(1, ConnectionResetError())

        @retrying("S3 get", first_delay=0.01)
        def get(self, key: str):
            return self.flaky(key)

    store = Store()
    assert store.get("k") == ("done", ("k",), {})
    assert store.flaky.calls == 2 and Store.get.__name__ == "get"


def test_the_retry_warning_hides_credentials_in_urls(caplog):
    error = ConnectionError("GET http://user:hunter2@minio:9000/b/k?X-Amz-Signature=deadbeef failed")
    with caplog.at_level(logging.WARNING, logger="flywheel.retries"):
        call_with_retries("S3 get", Flaky(1, error), first_delay=0.01)
    message = caplog.records[0].getMessage()
    assert "hunter2" not in message and "deadbeef" not in message and "minio:9000/b/k" in message


def test_backoff_doubles_up_to_the_cap_with_jitter():
    delays = backoff_delays(6, first_delay=0.5, max_delay=4.0)
    assert len(delays) == 5
    for delay, nominal in zip(delays, [0.5, 1.0, 2.0, 4.0, 4.0]):
        assert nominal / 2 <= delay <= nominal


def _client_error(code: str, status: int):
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


def _http_status(status: int):
    import httpx

    request = httpx.Request("GET", "http://127.0.0.1/api")
    return httpx.HTTPStatusError("status", request=request, response=httpx.Response(status, request=request))


def _raised_from(error: BaseException, cause: BaseException) -> BaseException:
    error.__cause__ = cause
    return error


def _raised_while_handling(error: BaseException, context: BaseException) -> BaseException:
    error.__context__ = context
    return error


def _cases():
    import httpx
    import requests
    from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError
    from mlflow.exceptions import MlflowException, RestException

    return [
        (ConnectionRefusedError(), True),
        (TimeoutError(), True),
        (OSError(errno.ENETUNREACH, "network is unreachable"), True),
        (OSError(errno.ENOENT, "no such file"), False),
        (socket.gaierror(socket.EAI_AGAIN, "temporary failure in name resolution"), True),
        (socket.gaierror(socket.EAI_NONAME, "name or service not known"), False),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:9"), True),
        (ConnectTimeoutError(endpoint_url="http://127.0.0.1:9"), True),
        (ReadTimeoutError(endpoint_url="http://127.0.0.1:9"), True),
        (_client_error("SlowDown", 503), True),
        (_client_error("InternalError", 500), True),
        (_client_error("RequestTimeout", 400), True),
        (_client_error("NoSuchKey", 404), False),
        (_client_error("AccessDenied", 403), False),
        (requests.exceptions.ConnectionError("refused"), True),
        (requests.exceptions.ReadTimeout("slow"), True),
        (requests.exceptions.InvalidURL("no"), False),
        (httpx.ConnectError("refused"), True),
        (httpx.UnsupportedProtocol("ftp://"), False),
        (_http_status(503), True),
        (_http_status(429), True),
        (_http_status(404), False),
        (RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "busy"}), True),
        (RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no such run"}), False),
        (MlflowException("API request to endpoint /x failed with error code 502 != 200. Response body: 'bad gateway'"), True),
        (MlflowException("Invalid metric name"), False),
        # MLflow's REST client raises inside `except` without `from`: the context counts for it.
        (_raised_while_handling(MlflowException("API request failed"), requests.exceptions.ConnectionError()), True),
        # ...but not for any error raised while handling a network error.
        (_raised_while_handling(KeyError("bug in a handler"), ConnectionError()), False),
        (_raised_from(RuntimeError("S3 put failed"), EndpointConnectionError(endpoint_url="http://x")), True),
        (ValueError("bad value"), False),
    ]


def test_is_transient_tells_network_failures_from_bugs():
    wrong = [(type(e).__name__, str(e), expected) for e, expected in _cases() if is_transient(e) != expected]
    assert not wrong


def test_mlflow_reports_a_refused_connection_as_a_transient_error(monkeypatch):
    """MLflow's client wraps a refused connection in a plain MlflowException (after its own
    urllib3 retries); is_transient finds the requests ConnectionError it was raised from."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from tests.conftest import free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(MlflowException) as failure:
        MlflowClient(tracking_uri=f"http://127.0.0.1:{free_port()}").get_experiment_by_name("x")
    assert is_transient(failure.value)


def test_importing_the_helper_imports_no_client_library():
    code = "import sys, infra.retries; print(sorted(m for m in ('boto3', 'botocore', 'mlflow', 'requests', 'httpx') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
