"""End to end on the real stack, on loopback: `flywheel stack up` (SeaweedFS S3 server, MLflow
server with S3 artifacts, Prefect server, process workers on the `flywheel` and `gpu` pools),
`flywheel deploy`, then `flywheel trigger` runs a round on the tiny model with generation and
training dispatched to the `gpu` worker; then the stack is killed and restarted, and the next round
continues from what the first left (its training diverges on the worker: the round is rejected). The stack is stopped by this module, whatever fails."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
import yaml

from infra import stack
from tests.tiny_round import tiny_round_config, word_band_prompt_file

pytestmark = [pytest.mark.slow, pytest.mark.stack]  # `make test-stack`

REPO = Path(__file__).resolve().parents[1]
LOOP = "stacktest"
SECRET = stack.LOCAL_S3_KEYS["AWS_SECRET_ACCESS_KEY"]
CRON = "0 0 1 1 *"  # once a year


@pytest.fixture(scope="module")
def running_stack(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stack")
    saved = dict(os.environ)
    try:
        state = stack.up(folder)
        os.environ.update(stack.client_env(state))
        # boto3's default session keeps the credentials it first resolved (an earlier module's
        # moto keys): drop it so clients made here read the stack's keys from the environment.
        boto3.DEFAULT_SESSION = None
        yield state
    finally:
        stack.down(folder)
        os.environ.clear()
        os.environ.update(saved)
        boto3.DEFAULT_SESSION = None


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def config_file(tiny_model, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("stackrun")
    config = tiny_round_config(
        tiny_model, LOOP, word_band_prompt_file(root / "prompts.jsonl"), root / "data",
        train={"deployment": "flywheel-train/train-gpu"},
        generate={"deployment": "flywheel-generate/generate-gpu"},
        regression={"tolerance": 1.0},
        # A bar any challenger clears, so the registry path runs: win rate above 0 (ties count
        # half), no failure-mode or benchmark limit worth the name.
        promotion={"min_win_rate": 0.0, "max_failure_increase": 1.0},
    ).model_dump(mode="json")
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    return root / "config.yaml"


def _trigger(config_file: Path, folder: str) -> subprocess.CompletedProcess:
    run = _cli("trigger", "--config-file", str(config_file), "--timeout", "900", timeout=1000)
    logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in Path(folder).glob("*.log"))
    assert run.returncode == 0, f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}\n{logs}"
    return run


@pytest.fixture(scope="module")
def triggered(running_stack, config_file):
    # A schedule that cannot fire while the test runs: a scheduled round (the demo, on the bundled model) would
    # take the loop deployment's one slot and the triggered round would wait for it.
    deployed = _cli("deploy", "--cron", CRON, timeout=300)
    assert deployed.returncode == 0, deployed.stderr[-3000:]
    return _trigger(config_file, running_stack["folder"])


def _prefect(call):
    """Call the stack's Prefect API (not a test harness's server another test module may hold)."""
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def go():
        async with get_client() as client:
            return await call(client)

    with temporary_settings({PREFECT_API_URL: os.environ["PREFECT_API_URL"]}):
        return asyncio.run(go())


def test_trigger_prints_the_round_summary(triggered):
    assert f"# {LOOP} round 1:" in triggered.stdout
    assert "PROMOTED" in triggered.stdout  # a 0.0 bar and a 100-point tolerance: the gate passes


def test_bucket_holds_every_stage_and_its_manifest(triggered):
    import boto3

    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    keys = {o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=stack.BUCKET) for o in page.get("Contents", [])}
    for stage in ["prompts", "generate", "judge", "filter", "train", "evaluate", "regression", "promote"]:
        assert f"artifacts/{LOOP}/round-001/{stage}/manifest.json" in keys, stage
    assert f"artifacts/{LOOP}/round-001/train/merged/model.safetensors" in keys
    assert any(k.startswith("mlflow/") and k.endswith("adapter/adapter_config.json") for k in keys), "MLflow artifacts are not in S3"


def test_generation_ran_on_the_gpu_pool(triggered):
    """generate.deployment: the round's candidates were sampled by the gpu worker, into the bucket."""
    from mlflow import MlflowClient
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    [run] = _prefect(lambda c: c.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[f"{LOOP}-round-001-generate"]))))
    assert run.state.is_completed() and run.work_pool_name == stack.GPU_POOL
    assert run.parameters["prompts_key"] == f"{LOOP}/round-001/prompts"
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    [round_run] = [r for r in client.search_runs([client.get_experiment_by_name("flywheel").experiment_id], f"tags.`flywheel.loop` = '{LOOP}'")
                   if r.data.tags.get("flywheel.round") == "1"]
    assert run.parameters["mlflow_run_id"] == round_run.info.run_id
    assert round_run.data.metrics["generate/n_candidates"] == 24  # 6 prompts x 4, logged by the worker into the round's run


def test_training_ran_on_the_gpu_pool(triggered):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    runs = _prefect(lambda c: c.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[f"{LOOP}-round-001-train"]))))
    runs = [r for r in runs if not r.parameters.get("key_prefix")]  # not an ablation cell's
    assert len(runs) == 1 and runs[0].state.is_completed()
    assert runs[0].work_pool_name == stack.GPU_POOL


def test_mlflow_server_holds_metrics_and_the_champion_version(triggered):
    from mlflow import MlflowClient

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    [run] = client.search_runs([client.get_experiment_by_name("flywheel").experiment_id], f"tags.`flywheel.loop` = '{LOOP}'")
    assert {"train/loss", "evaluate/win_rate", "regression/passed", "promote/promoted"} <= set(run.data.metrics)
    version = client.get_model_version_by_alias(f"{LOOP}-policy", "champion")
    assert version.run_id == run.info.run_id
    assert version.tags["flywheel.merged_uri"] == f"s3://{stack.BUCKET}/artifacts/{LOOP}/round-001/train/merged"


def test_prefect_shows_artifacts_and_the_cron_deployment(triggered):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    deployment = _prefect(lambda c: c.read_deployment_by_name("flywheel-scheduled-loop/scheduled"))
    assert [s.schedule.cron for s in deployment.schedules] == [CRON]
    artifacts = _prefect(lambda c: c.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"{LOOP}-round-summary", f"{LOOP}-history"]))))
    assert {a.key for a in artifacts} == {f"{LOOP}-round-summary", f"{LOOP}-history"}


def test_no_secret_leaked(triggered, running_stack):
    import boto3
    from mlflow import MlflowClient

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    [run] = client.search_runs([client.get_experiment_by_name("flywheel").experiment_id], f"tags.`flywheel.loop` = '{LOOP}'")
    version = client.get_model_version_by_alias(f"{LOOP}-policy", "champion")
    assert SECRET not in json.dumps([run.data.params, run.data.tags, version.tags])
    artifacts = _prefect(lambda c: c.read_artifacts())
    assert SECRET not in json.dumps([a.data for a in artifacts], default=str)
    logs = _prefect(lambda c: c.read_logs())
    assert logs and SECRET not in json.dumps([entry.message for entry in logs])
    runs = _prefect(lambda c: c.read_flow_runs())
    assert SECRET not in json.dumps([r.parameters for r in runs], default=str)
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=stack.BUCKET):
        for obj in page.get("Contents", []):
            if obj["Key"].endswith((".json", ".jsonl", ".yaml", ".txt", ".md")):
                body = s3.get_object(Bucket=stack.BUCKET, Key=obj["Key"])["Body"].read().decode(errors="replace")
                assert SECRET not in body, obj["Key"]
    assert triggered.stdout.count(SECRET) == 0 and triggered.stderr.count(SECRET) == 0


def test_ablation_cells_train_at_once_on_the_gpu_pool(triggered, config_file):
    """With training on a work pool the cells run at once: DPO (which computes the reference
    log-probs) and SimPO (reference-free) are both on the gpu worker before either ends."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    done = _cli("ablate", "--config", str(config_file), "--round", "1", "--objectives", "dpo,simpo", "--ranks", "4", timeout=900)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert "dpo-r4-betadefault" in done.stdout and "simpo-r4-betadefault" in done.stdout
    runs = _prefect(lambda c: c.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[f"{LOOP}-round-001-train"]))))
    cells = {r.parameters.get("key_prefix", "").rsplit("/", 1)[-1]: r for r in runs if r.parameters.get("key_prefix")}
    assert set(cells) == {"dpo-r4-betadefault", "simpo-r4-betadefault"}
    assert all(r.state.is_completed() and r.work_pool_name == stack.GPU_POOL for r in cells.values())
    dpo, simpo = cells["dpo-r4-betadefault"], cells["simpo-r4-betadefault"]
    assert dpo.start_time < simpo.end_time and simpo.start_time < dpo.end_time, "the cells trained one after the other"


STAGES = ["config", "prompts", "generate", "judge", "filter", "train", "evaluate", "regression", "promote"]


def test_work_survives_a_killed_and_restarted_stack(triggered, running_stack, config_file, tmp_path):
    """kill -9 of the S3 server, `stack down`, `stack up`: the same addresses, every stage of round 1
    read back from S3 with its checksums verified, and round 2 starts from round 1's registered
    champion; its training, diverging on the gpu worker, rejects the round and leaves the champion."""
    from mlflow import MlflowClient

    from infra.s3_store import S3ArtifactStore

    folder = Path(running_stack["folder"])
    os.killpg(running_stack["pids"]["s3"], signal.SIGKILL)
    stack.down(folder)
    restarted = stack.up(folder)
    assert stack.client_env(restarted) == stack.client_env(running_stack)  # the exported environment still holds

    store = S3ArtifactStore(f"s3://{stack.BUCKET}/artifacts", tmp_path / "fresh-cache")  # nothing cached: all from S3
    for stage in STAGES:
        key = f"{LOOP}/round-001/{stage}"
        local = store.local_path(key)  # downloads every file and checks it against the manifest
        assert {entry.path for entry in store.manifest(key).files} <= {str(p.relative_to(local)) for p in local.rglob("*")}, stage
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    champion = client.get_model_version_by_alias(f"{LOOP}-policy", "champion")

    shutil.rmtree(config_file.parent / "data" / "s3-cache", ignore_errors=True)  # the worker too reads S3 again
    # Round 2 diverges on the gpu worker (a first step of 1e30: NaN from step 2): the
    # worker's run completes, the round is rejected with the reason, the champion stays.
    diverging = yaml.safe_load(config_file.read_text())
    diverging["train"].update(learning_rate=[1e30], batch_size=1, epochs=2)
    (config_file.parent / "diverging.yaml").write_text(yaml.safe_dump(diverging))
    second = _trigger(config_file.parent / "diverging.yaml", restarted["folder"])
    assert f"# {LOOP} round 2:" in second.stdout and "the loss diverged" in second.stdout, second.stdout[-3000:]
    runs = client.search_runs([client.get_experiment_by_name("flywheel").experiment_id], f"tags.`flywheel.loop` = '{LOOP}'")
    by_round = {r.data.tags.get("flywheel.round"): r for r in runs}
    assert by_round["2"].data.tags["flywheel.champion_round"] == "1"
    assert by_round["2"].data.tags["flywheel.decision"] == "rejected"
    assert client.get_model_version_by_alias(f"{LOOP}-policy", "champion").version == champion.version
    assert champion.run_id == by_round["1"].info.run_id
    assert store.manifest(f"{LOOP}/round-002/train") is None, "a diverged training was kept"
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    [train_run] = _prefect(lambda c: c.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[f"{LOOP}-round-002-train"]))))
    assert train_run.state.is_completed() and train_run.work_pool_name == stack.GPU_POOL
