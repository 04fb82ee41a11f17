"""Resuming rounds on S3: a round killed (SIGKILL) during training continues where it stopped,
and a changed stage config reruns that stage and those after it, not those before."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from infra.settings import FlywheelConfig
from infra.store import store_from_config
from tests.tiny_round import tiny_round_config, word_band_prompt_file

pytestmark = pytest.mark.slow

BEFORE_TRAIN = ["prompts", "generate", "judge", "filter"]
FROM_TRAIN = ["train", "evaluate", "regression", "promote"]


@pytest.fixture(scope="module")
def s3_config(tiny_model, s3_server, tmp_path_factory) -> FlywheelConfig:
    root = tmp_path_factory.mktemp("resume")
    bucket = f"resume-{uuid.uuid4().hex[:8]}"
    s3_server.client().create_bucket(Bucket=bucket)
    return tiny_round_config(
        tiny_model, "resume", word_band_prompt_file(root / "prompts.jsonl"), root / "data",
        # Long enough on the tiny model to be killed in the middle of it.
        train={"epochs": 150},
        storage={"artifact_root": f"s3://{bucket}/flywheel", "s3_endpoint_url": s3_server.url},
    )


def _manifests(store, stages, round_index=1):
    return {s: store.manifest(f"resume/round-{round_index:03d}/{s}") for s in stages}


def _run_killed_during_training(config: FlywheelConfig, tmp_path: Path) -> None:
    """Run `flywheel round` in a child process and SIGKILL it once training has begun."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-child"), PREFECT_SERVER_ANALYTICS_ENABLED="false", PYTHONUNBUFFERED="1")
    log = open(tmp_path / "child.log", "w")
    # A session of its own, so the kill takes the child's ephemeral Prefect server with it.
    child = subprocess.Popen([sys.executable, "-m", "flows.cli", "round", "--config", str(path)], env=env, stdout=log,
                             stderr=subprocess.STDOUT, cwd=Path(__file__).parents[1], start_new_session=True)
    store = store_from_config(config.storage)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and child.poll() is None:
            # The trainer prints each logged step ({'loss': ...}): training has begun.
            if "{'loss'" in (tmp_path / "child.log").read_text():
                break
            time.sleep(0.5)
        assert child.poll() is None, f"round ended before it could be killed:\n{(tmp_path / 'child.log').read_text()[-3000:]}"
        assert store.is_complete("resume/round-001/filter"), "killed before training began"
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        try:
            os.killpg(child.pid, signal.SIGKILL)  # whoever fails: nothing of the child survives
        except ProcessLookupError:
            pass
        child.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def killed_then_resumed(s3_config, prefect_harness, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("child")
    store = store_from_config(s3_config.storage)
    _run_killed_during_training(s3_config, tmp_path)
    at_kill = _manifests(store, BEFORE_TRAIN + FROM_TRAIN)

    from flows.round import run_next_round

    summary = run_next_round(s3_config)
    return store, at_kill, summary


def test_killed_round_resumes_after_the_completed_stages(killed_then_resumed):
    store, at_kill, summary = killed_then_resumed
    assert all(at_kill[s] is not None for s in BEFORE_TRAIN)
    assert at_kill["train"] is None, "the kill came after training finished"
    assert summary.round == 1, "the rerun must continue round 1, not start round 2"
    after = _manifests(store, BEFORE_TRAIN + FROM_TRAIN)
    for stage in BEFORE_TRAIN:
        # Same manifest (same checksums, same creation time): the stage was not redone.
        assert after[stage] == at_kill[stage], f"{stage} was redone"
    assert all(after[s] is not None for s in FROM_TRAIN)


def test_bucket_holds_every_stage_with_its_manifest(killed_then_resumed, s3_server, s3_config):
    store, _, _ = killed_then_resumed
    bucket = s3_config.storage.artifact_root.removeprefix("s3://").split("/")[0]
    keys = {o["Key"] for page in s3_server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket) for o in page.get("Contents", [])}
    for stage, manifest in _manifests(store, BEFORE_TRAIN + FROM_TRAIN).items():
        assert f"flywheel/resume/round-001/{stage}/manifest.json" in keys
        assert {f"flywheel/resume/round-001/{stage}/{f.path}" for f in manifest.files} <= keys


def test_changed_stage_config_reruns_it_and_later_stages_only(killed_then_resumed, s3_config):
    store, _, _ = killed_then_resumed
    before = _manifests(store, BEFORE_TRAIN + FROM_TRAIN)
    changed = s3_config.model_copy(
        update={
            "filter": s3_config.filter.model_copy(update={"similarity_threshold": 0.95}),
            "train": s3_config.train.model_copy(update={"epochs": 1.0}),
        }
    )
    from flows.round import run_round

    run_round(config=changed, round_index=1)
    after = _manifests(store, BEFORE_TRAIN + FROM_TRAIN)
    for stage in ["prompts", "generate", "judge"]:
        assert after[stage] == before[stage], f"{stage} was redone though its inputs and config did not change"
    assert after["filter"].config_hash != before["filter"].config_hash
    for stage in ["filter", "train", "evaluate", "regression"]:
        assert after[stage].created_at != before[stage].created_at, f"{stage} was not redone"
