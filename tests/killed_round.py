"""Run ``flywheel round`` in a child process, watch its log, and SIGKILL it (with its ephemeral
Prefect server) once a condition on its log or its store holds; and the chain of such kills, one
in every stage of a round, that the fault tests and the resume tests share (``kill_in_every_stage``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from infra import layout
from infra.settings import FlywheelConfig
from infra.store import Manifest
from infra.store_factory import store_from_config
from tests.proxy import HoldingProxy
from tests.tiny_round import tiny_round_config, word_band_prompt_file

# A round's stages in the order it completes them; "figures" opens the publishing after the
# decision (figures, Prefect artifacts, then the history row). The config is saved by every run.
ROUND_STAGES = [s for s in layout.STAGES if s != layout.CONFIG]
# Where each kill lands: while the stage's work runs (a line of its log: run_stage's
# "<key>: running", or the trainer's first logged step), or while the write of its manifest is
# held by a proxy in front of S3 (its files are in the bucket, the object marking it complete is not).
KILL_AT = {
    layout.GENERATE: "running",
    layout.JUDGE: "manifest",
    layout.FILTER: "manifest",
    layout.TRAIN: "{'loss'",
    layout.EVALUATE: "running",
    layout.REGRESSION: "running",
    layout.PROMOTE: "manifest",
    layout.FIGURES: "manifest",
}


def start_round(config: FlywheelConfig, tmp_path: Path, **env: str) -> tuple[subprocess.Popen, Path]:
    """``flywheel round`` on ``config`` in a session of its own (a kill takes its ephemeral Prefect
    server with it), with no PREFECT_ setting of this process but ``env``'s; returns it and its log."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    child_env.update(PREFECT_HOME=str(tmp_path / "prefect-child"), PREFECT_SERVER_ANALYTICS_ENABLED="false", PYTHONUNBUFFERED="1")
    child_env.update(env)
    log_path = tmp_path / "child.log"
    with open(log_path, "w") as log:
        child = subprocess.Popen([sys.executable, "-m", "flows.cli", "round", "--config", str(path)], env=child_env, stdout=log,
                                 stderr=subprocess.STDOUT, cwd=Path(__file__).parents[1], start_new_session=True)
    return child, log_path


def wait_for_log(child: subprocess.Popen, log_path: Path, ready: Callable[[str], bool], timeout_s: float = 600) -> None:
    """Poll ``ready(log so far)`` every 0.1 s; fails if the round ended first or never got there."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and child.poll() is None and not ready(log_path.read_text()):
        time.sleep(0.1)
    assert child.poll() is None, f"round ended before it got there:\n{log_path.read_text()[-3000:]}"
    assert time.monotonic() < deadline, f"the round never got there:\n{log_path.read_text()[-3000:]}"


def kill_session(child: subprocess.Popen) -> None:
    """SIGKILL the child's whole session (nothing of it survives) and reap it."""
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    child.wait(timeout=30)


def run_round_until(config: FlywheelConfig, tmp_path: Path, ready: Callable[[str], bool], timeout_s: float = 600, **env: str) -> float:
    """Start the round, poll ``ready(log so far)`` and kill -9 the round's whole session when it
    holds; returns the time of the kill. Fails if the round ended first or never got there."""
    child, log_path = start_round(config, tmp_path, **env)
    try:
        wait_for_log(child, log_path, ready, timeout_s)
        os.killpg(child.pid, signal.SIGKILL)
        return time.time()
    finally:
        kill_session(child)  # whoever fails


@dataclass(frozen=True)
class Kill:
    """What the store held right after the round was killed in ``stage``."""

    stage: str
    killed_at: float  # time.time()
    mlflow_run_id: str  # the killed process's run
    manifests: dict[str, Manifest | None]  # every stage's
    history: list[dict[str, Any]]  # the loop's history rows
    champion: dict[str, Any] | None  # the store's champion pointer
    objects: set[str]  # the killed stage's objects in the bucket, relative to the stage
    log: str  # the killed process's whole output


@dataclass(frozen=True)
class KillChain:
    """Round 1 killed in every stage, each rerun in a new process, then finished in this one;
    what the store, the registry and MLflow held at the end, before any later test touched them."""

    config: FlywheelConfig
    bucket: str
    kills: list[Kill]
    summary: Any  # the finishing run's RoundSummary
    manifests: dict[str, Manifest | None]
    history: list[dict[str, Any]]
    champion: dict[str, Any] | None  # the store's pointer
    champion_version: tuple[str, str] | None  # the registry version carrying the alias, and its MLflow run
    run_statuses: list[str]  # of the loop's MLflow runs, oldest first


def kill_in_every_stage(tiny_model: str, s3_server, root: Path, loop: str = "chain") -> KillChain:
    """Start round 1 on S3 (moto, behind a ``HoldingProxy``) in a child process and kill -9 it in
    generate; rerun it in a new child and kill it in judge; and so on through ``KILL_AT``; then
    finish the round here (``run_next_round``). The children share one Prefect home, as reruns of
    `flywheel round` on one machine do: a child killed inside the train-promote slot must not
    leave it taken for the next."""
    from flows.round import run_next_round

    proxy = HoldingProxy(s3_server.port)
    bucket = f"{loop}-{uuid.uuid4().hex[:8]}"
    s3_server.client().create_bucket(Bucket=bucket)
    config = tiny_round_config(
        tiny_model, loop, word_band_prompt_file(root / "prompts.jsonl"), root / "data",
        # 30 steps (6 pairs, 2 a step): the kill after the first lands well before the last.
        train={"epochs": 10},
        # A gate the barely trained challenger passes (ties count half), so the kill in promote
        # lands after the crowning (registry version, alias, pointer), before the decision is stored.
        promotion={"min_win_rate": 0.0, "max_failure_increase": 1.0, "max_length_drift": None, "require_regression_pass": False},
        storage={"artifact_root": f"s3://{bucket}/fw", "s3_endpoint_url": proxy.url},
    )
    store = store_from_config(config.storage)
    kills: list[Kill] = []
    try:
        for stage, at in KILL_AT.items():
            key = layout.stage_key(loop, 1, stage)
            if at == "manifest":
                proxy.arm(b"PUT", f"/fw/{key}/{layout.MANIFEST} ".encode())
                ready = lambda log: proxy.held.is_set()  # noqa: E731
            else:
                marker = f"{key}: running" if at == "running" else at
                ready = lambda log, marker=marker: marker in log  # noqa: E731
            folder = root / f"killed-in-{stage}"
            folder.mkdir()
            killed_at = run_round_until(config, folder, ready, PREFECT_HOME=str(root / "prefect-home"))
            listed = s3_server.client().list_objects_v2(Bucket=bucket, Prefix=f"fw/{key}/").get("Contents", [])
            kills.append(Kill(
                stage, killed_at, _runs(config)[-1].info.run_id, _manifests(store, loop),
                store.read_json(layout.history_key(loop)) or [], store.read_json(layout.champion_key(loop)),
                {o["Key"].removeprefix(f"fw/{key}/") for o in listed}, (folder / "child.log").read_text(),
            ))
    finally:
        proxy.close()
    # The proxy was the kills' tool; from here on the round talks to moto directly (the endpoint
    # is no stage's input).
    config = config.model_copy(update={"storage": config.storage.model_copy(update={"s3_endpoint_url": s3_server.url})})
    store = store_from_config(config.storage)
    summary = run_next_round(config)
    return KillChain(config, bucket, kills, summary, _manifests(store, loop), store.read_json(layout.history_key(loop)) or [],
                     store.read_json(layout.champion_key(loop)), _champion_version(config), [r.info.status for r in _runs(config)])


def _manifests(store, loop: str) -> dict[str, Manifest | None]:
    return {s: store.manifest(layout.stage_key(loop, 1, s)) for s in ROUND_STAGES}


def _mlflow(config: FlywheelConfig):
    from mlflow import MlflowClient

    from infra.tracking import tracking_uri

    return MlflowClient(tracking_uri(config.storage))


def _runs(config: FlywheelConfig) -> list:
    """The loop's MLflow runs, oldest first."""
    client = _mlflow(config)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, f"tags.`flywheel.loop` = '{config.loop}'", order_by=["attributes.start_time ASC"])


def _champion_version(config: FlywheelConfig) -> tuple[str, str] | None:
    """The registry version carrying the ``champion`` alias, and its MLflow run; None when there is none."""
    from mlflow.exceptions import MlflowException

    from infra.champion import registered_model_name

    try:
        version = _mlflow(config).get_model_version_by_alias(registered_model_name(config), "champion")
    except MlflowException:
        return None
    return str(version.version), version.run_id
