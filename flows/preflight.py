"""Before a round starts: do the services it needs answer? Each one that does not is named,
with what to do, instead of a traceback minutes later.

- the Prefect API: the server at ``PREFECT_API_URL``, or else Prefect's temporary (ephemeral)
  server, started here, so a slow start fails with advice; it gets
  ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS`` (Prefect's own setting; the CLI raises
  Prefect's 20 s default to ``EPHEMERAL_STARTUP_TIMEOUT_S`` for loaded machines);
- the MLflow tracking server, when the tracking URI is http(s);
- the S3 endpoint and bucket, when the artifact root is ``s3://``;
- the Hugging Face hub, when ``model.base`` is a hub id not downloaded yet (offline, the config
  checks already refused it: ``infra/model_source.py``).

    check_services(config)   # ServiceUnavailable lists every service that did not answer
    check_services(config, start_ephemeral=False)   # `flywheel check`: starts nothing, writes nothing
    service_lines(config)    # where each service is, for `flywheel check` to print
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request

from infra.settings import FlywheelConfig

EPHEMERAL_STARTUP_TIMEOUT_S = 180  # 20 s (Prefect's default) was measured too short on a busy 2-core machine
ANSWER_WITHIN_S = 15  # how long a configured server gets to answer at start


class ServiceUnavailable(RuntimeError):
    """A service the command needs did not answer; the message says which and what to do."""


def check_services(config: FlywheelConfig, start_ephemeral: bool = True) -> None:
    """Raise ServiceUnavailable naming each service that does not answer. With ``start_ephemeral``
    False, Prefect's temporary server (which writes its database) is not started, only trusted."""
    from concurrent.futures import ThreadPoolExecutor

    checks = (lambda: _prefect_problem(start_ephemeral), lambda: _tracking_problem(config), lambda: _s3_problem(config),
              lambda: _hub_problem(config), lambda: _ray_problem(config))
    with ThreadPoolExecutor(len(checks)) as pool:  # each may wait ANSWER_WITHIN_S: wait once, not three times
        problems = [p for p in pool.map(lambda check: check(), checks) if p]
    if problems:
        raise ServiceUnavailable("\n".join(["cannot start: a service does not answer", *(f"  {p}" for p in problems)]))


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.split(". ")[0].splitlines()[0][:300]


def _http_problem(url: str, what: str, advice: str) -> str | None:
    """None once ``url`` answers (any status below 500) within ANSWER_WITHIN_S; else what failed and what to do."""
    deadline = time.monotonic() + ANSWER_WITHIN_S
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return None
        except urllib.error.HTTPError as err:
            if err.code < 500:
                return None
            last: BaseException = err
        except OSError as err:
            last = err
        if time.monotonic() > deadline:
            return f"{what} does not answer at {url} ({_first_line(last)}): {advice}"
        time.sleep(1)


def service_lines(config: FlywheelConfig) -> list[str]:
    """Where the Prefect API, MLflow and the artifact store are, as a round would use them (reads nothing)."""
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    tracking = _configured_tracking_uri(config)
    return [
        f"Prefect: {api}" if api else "Prefect: a temporary server each command starts (PREFECT_API_URL unset)",
        f"MLflow:  {tracking or 'sqlite under ' + str(config.storage.data_dir) + ' (created by the first round)'}",
        f"store:   {config.storage.resolved_artifact_root()}",
    ]


def _configured_tracking_uri(config: FlywheelConfig) -> str | None:
    # infra.tracking.tracking_uri would create the sqlite database's folder: a check must not.
    return config.storage.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")


def _prefect_problem(start_ephemeral: bool = True) -> str | None:
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    api = PREFECT_API_URL.value()
    if api:
        return _http_problem(f"{api.rstrip('/')}/health", "the Prefect API (PREFECT_API_URL)",
                             "start that server, or unset PREFECT_API_URL to let Flywheel start a temporary one")
    if not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return "PREFECT_API_URL is not set and Prefect's ephemeral mode is off: point PREFECT_API_URL at a Prefect server"
    if not start_ephemeral:
        return None
    from prefect.server.api.server import SubprocessASGIServer

    timeout = PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()
    server = SubprocessASGIServer()  # one per process: the round's Prefect client reuses it
    try:
        server.start()
    except Exception as err:
        server.stop()
        why = "" if str(err).startswith("Timed out") and "exited" not in str(err) else f" ({_first_line(err)})"
        return (f"Prefect's temporary API server did not start within {timeout} s{why}: on a busy machine "
                f"give it longer (PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS={max(timeout, 60) * 2}), "
                "or point PREFECT_API_URL at a running Prefect server (`flywheel stack up` starts one)")
    return None


def _tracking_problem(config: FlywheelConfig) -> str | None:
    uri = _configured_tracking_uri(config) or ""  # unset: sqlite under data_dir, nothing to ask
    if not uri.startswith(("http://", "https://")):
        return None
    return _http_problem(f"{uri.rstrip('/')}/health", "the MLflow tracking server",
                         "start it, or point MLFLOW_TRACKING_URI (storage.tracking_uri) at one that runs")


def _s3_problem(config: FlywheelConfig) -> str | None:
    root = config.storage.resolved_artifact_root()
    if not str(root).startswith("s3://"):
        return None
    from botocore.exceptions import BotoCoreError, ClientError

    from infra.s3_store import S3ArtifactStore

    store = S3ArtifactStore(str(root), config.storage.data_dir, config.storage.s3_endpoint_url)
    where = store.endpoint_url or "AWS S3"
    deadline = time.monotonic() + ANSWER_WITHIN_S
    while True:
        try:
            store.client.head_bucket(Bucket=store.bucket)
            return None
        except ClientError as err:  # it answered: the bucket or the credentials are wrong
            return f"S3 at {where} refused bucket {store.bucket!r} ({_first_line(err)}): create it, or check the credentials"
        except BotoCoreError as err:
            if time.monotonic() > deadline:
                return (f"S3 does not answer at {where} ({_first_line(err)}): start it, or point AWS_ENDPOINT_URL "
                        "(storage.s3_endpoint_url) at one that runs")
        time.sleep(1)


def _hub_problem(config: FlywheelConfig) -> str | None:
    from infra.model_source import cached_hub_file, download_advice, hub_endpoint, hub_model, hub_offline

    base = config.model.base
    if not hub_model(base) or hub_offline() or cached_hub_file(base, "config.json") is not None:
        return None
    return _http_problem(f"{hub_endpoint()}/api/models/{base}", f"the Hugging Face hub (model.base {base!r} is not downloaded yet)",
                         download_advice(base))


def _ray_problem(config: FlywheelConfig) -> str | None:
    """Whether the Ray cluster a stage would run on answers at its address (a TCP connection to the head's
    GCS port or Ray Client's; nothing joins it). No address: Ray would start in the round's process."""
    import socket
    from urllib.parse import urlparse

    from infra.ray_cluster import public_address, uses_ray

    address = config.ray.resolved_address()
    if not uses_ray(config) or address in (None, "auto", "local"):
        return None
    parsed = urlparse(address if "://" in address else f"gcs://{address}")
    try:
        with socket.create_connection((parsed.hostname, parsed.port or 6379), timeout=ANSWER_WITHIN_S):
            return None
    except (OSError, ValueError) as err:
        return (f"the Ray cluster does not answer at {public_address(address)} (ray.address or RAY_ADDRESS; {_first_line(err)}): "
                "start it (`ray start --head` there), or leave train.engine 'local' and generate.backend 'hf'")
