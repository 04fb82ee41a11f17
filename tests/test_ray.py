"""Flywheel on a real Ray cluster: a head and a worker node started as `ray start` processes on this
machine (tests/ray_nodes.py, one CPU each), shared by the module's tests and stopped at its end, also
when a test fails.

* training (train.engine 'ray', 2 Ray Train workers over gloo) follows the loss curve of one process
  and writes one merged checkpoint, each step logged to MLflow once;
* sampling (generate.backend 'ray', 2 actors running the hf engine) gives the one-process samples;
* the worker node SIGKILLed mid-training: Ray Train restarts the workers on a node that replaces it
  and the training completes (attempts 2); with no retries left, the round fails saying so, and the
  rerun finishes without redoing the stages before training.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import pytest

from flows.stages import train_policy_task
from infra import layout
from infra.ray_cluster import join_cluster
from infra.settings import FlywheelConfig, RayConfig
from tests.conftest import free_port
from tests.ray_nodes import LocalRayCluster
from tests.test_multiprocess_train import TOLERANCE, _logged, _losses, _stage

pytestmark = [pytest.mark.slow, pytest.mark.stack, pytest.mark.ray]


@pytest.fixture(scope="module")
def ray_cluster(s3_server):
    """The nodes start after the S3 server's throwaway credentials are in the environment, which their workers inherit."""
    import ray

    cluster = LocalRayCluster(free_port())
    try:
        join_cluster(RayConfig(address=cluster.address))
        yield cluster
    finally:
        ray.shutdown()
        cluster.stop()


@pytest.fixture(scope="module")
def trained_on_ray(ray_cluster, tiny_model, tmp_path_factory):
    one = _stage(tmp_path_factory.mktemp("ray-one"), tiny_model, "one")
    on_ray = _stage(tmp_path_factory.mktemp("ray-two"), tiny_model, "on-ray", engine="ray", ray={"num_workers": 2})
    return [(ctx, train_policy_task.fn(ctx, pairs)) for ctx, pairs in (one, on_ray)]


def test_two_ray_workers_follow_the_loss_curve_of_one_process(trained_on_ray):
    (_, one), (_, two) = trained_on_ray
    assert two.result.n_steps == one.result.n_steps == 4 and two.result.attempts == 1
    for name in ("loss", "eval_loss", "rewards/margins"):
        curve_one, curve_two = _losses(one.result.log_history, name), _losses(two.result.log_history, name)
        assert [s for s, _ in curve_one] == [s for s, _ in curve_two], name
        assert [v for _, v in curve_two] == pytest.approx([v for _, v in curve_one], abs=TOLERANCE), name
    assert two.result.kept_heldout_loss == pytest.approx(one.result.kept_heldout_loss, abs=TOLERANCE)


def test_one_merged_checkpoint_each_step_logged_once(trained_on_ray):
    from safetensors.torch import load_file

    (ctx_one, one), (ctx, two) = trained_on_ray
    folder = ctx.store.local_path(two.key)
    assert ctx.store.manifest(two.key) is not None
    assert [p.relative_to(folder) for p in folder.rglob("config.json")] == [Path(layout.MERGED, "config.json")]
    merged_one = load_file(str(ctx_one.store.local_path(one.key) / layout.MERGED / "model.safetensors"))
    merged_two = load_file(str(folder / layout.MERGED / "model.safetensors"))
    assert max((merged_one[k] - merged_two[k]).abs().max().item() for k in merged_one) < 1e-4
    logged = _logged(ctx, "train/loss")
    assert [step for step, _ in logged] == list(range(1, two.result.n_steps + 1))
    # Ray Train's checkpoint and the reference pass's log-probs lie in the artifact store, beside the stage.
    assert list(Path(ctx.store.uri(f"{ctx.key(layout.TRAIN)}-ray")).rglob("result.json"))
    assert list(Path(ctx.store.uri(f"{ctx.key(layout.TRAIN)}-reference-logps")).glob("*.json"))


def test_training_on_ray_with_an_s3_store(ray_cluster, tiny_model, tmp_path, s3_server):
    """The artifact store on S3 (moto on loopback): Ray Train's checkpoint and the reference log-probs go
    there, and the stage's files come back from it."""
    from infra.store_factory import open_store

    s3_server.client().create_bucket(Bucket="ray-train")
    ctx, pairs = _stage(tmp_path, tiny_model, "on-s3", engine="ray", ray={"num_workers": 2})
    store = open_store("s3://ray-train/fw", tmp_path / "s3-cache", s3_server.url)
    config = ctx.config.model_copy(update={"storage": ctx.config.storage.model_copy(update={"s3_endpoint_url": s3_server.url})})
    with store.stage(ctx.key(layout.FILTER)) as out:
        (out / layout.PAIRS).write_bytes(ctx.store.local_path(pairs.key).joinpath(layout.PAIRS).read_bytes())
    ctx = dataclasses.replace(ctx, store=store, config=config)
    trained = train_policy_task.fn(ctx, pairs)
    keys = {o["Key"] for page in s3_server.client().get_paginator("list_objects_v2").paginate(Bucket="ray-train")
            for o in page.get("Contents", [])}
    assert any(k.startswith(f"fw/{ctx.key(layout.TRAIN)}-ray/") and k.endswith("result.json") for k in keys)
    assert any(k.startswith(f"fw/{ctx.key(layout.TRAIN)}-reference-logps/") for k in keys)
    assert f"fw/{ctx.key(layout.TRAIN)}/{layout.MERGED}/config.json" in keys and store.manifest(trained.key) is not None


def test_two_sampling_actors_give_the_hf_samples(ray_cluster, tiny_model):
    from tasks.sampling.backends import open_backend
    from tasks.sampling.requests import SampleRequest

    config = FlywheelConfig.model_validate({"model": {"base": tiny_model, "dtype": "fp32"}, "generate": {"batch_size": 8}})
    requests = [SampleRequest((i, k), f"Write about topic {i}." + " Please." * (i % 5), t)
                for i in range(12) for k, t in enumerate((0.6, 1.0))] + [SampleRequest(("greedy", i), f"Say {i}.", 0.0) for i in range(4)]
    with open_backend(tiny_model, config.generate, config.model) as hf:
        expected = hf.sample(requests, 12, 8, seed=5, top_p=0.95)
    config.generate.backend = "ray"
    with open_backend(tiny_model, config.generate, config.model) as on_ray:
        assert on_ray.units(requests, 8) >= 3  # more batches than actors: both take some
        assert on_ray.sample(requests, 12, 8, seed=5, top_p=0.95) == expected
        assert on_ray.sample(requests, 12, 8, seed=6, top_p=0.95) != expected


def _when_reference_logged(root: Path, action, timeout_s: float = 600) -> threading.Thread:
    """Run ``action`` once the train stage has stored its reference log-probs (training is then under way)."""
    def watch() -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if list(root.rglob("*-reference-logps/*.json")):
                action()
                return
            time.sleep(0.2)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_a_worker_node_killed_mid_training_is_retried(ray_cluster, tiny_model, tmp_path):
    ctx, pairs = _stage(tmp_path, tiny_model, "retry", engine="ray", epochs=6, ray={"num_workers": 2, "max_failures": 1})
    killed = threading.Event()

    def kill_and_replace() -> None:
        ray_cluster.kill_worker()
        killed.set()
        ray_cluster.start_worker()

    watcher = _when_reference_logged(tmp_path / "artifacts", kill_and_replace)
    trained = train_policy_task.fn(ctx, pairs)
    watcher.join(timeout=300)
    assert killed.is_set()
    assert trained.result.attempts == 2 and trained.result.n_steps == 12
    assert [step for step, _ in _logged(ctx, "train/loss")] == list(range(1, 13))  # once each, the retry's repeats dropped
    assert (ctx.store.local_path(trained.key) / layout.MERGED / "config.json").exists()


def test_no_retries_left_fails_the_round_and_the_rerun_resumes(ray_cluster, tiny_model, tmp_path, prefect_harness):
    from flows.round import run_round
    from infra.store_factory import store_from_config
    from tasks.ray_training import RayTrainingFailed
    from tests.tiny_round import tiny_round_config, word_band_prompt_file

    prompts = word_band_prompt_file(tmp_path / "prompts.jsonl")
    config = tiny_round_config(tiny_model, "ray-round", prompts, tmp_path / "data",
                               train={"engine": "ray", "epochs": 4, "ray": {"num_workers": 2, "max_failures": 0}},
                               generate={"backend": "ray"}, ray={"address": ray_cluster.address})
    killed = threading.Event()
    watcher = _when_reference_logged(tmp_path / "data", lambda: (ray_cluster.kill_worker(), killed.set()))
    with pytest.raises(RayTrainingFailed, match=r"training on Ray \(2 workers\) failed after 1 attempt\(s\) "
                                                r"\(train.ray.max_failures 0\): .*a rerun resumes at the train stage"):
        run_round(config=config, round_index=1)
    watcher.join(timeout=60)
    assert killed.is_set()
    store = store_from_config(config.storage)
    before = {s: store.manifest(layout.stage_key(config.loop, 1, s)) for s in (layout.PROMPTS, layout.GENERATE, layout.JUDGE, layout.FILTER)}
    assert all(before.values()) and store.manifest(layout.stage_key(config.loop, 1, layout.TRAIN)) is None

    ray_cluster.start_worker()
    summary = run_round(config=config, round_index=1)
    after = {s: store.manifest(layout.stage_key(config.loop, 1, s)) for s in before}
    assert after == before, "a stage before training was redone"
    assert store.manifest(layout.stage_key(config.loop, 1, layout.TRAIN)) is not None
    assert summary.ray == {"address": ray_cluster.address, "job_id": summary.ray["job_id"]} and summary.ray["job_id"]


def _cuda_devices() -> int:
    import torch

    return torch.cuda.device_count()


@pytest.mark.gpu
@pytest.mark.skipif(_cuda_devices() < 1, reason="needs CUDA")
def test_training_on_a_gpu_worker(ray_cluster, tiny_model, tmp_path):
    """The same training with use_gpu: one NCCL worker on the GPU (this cluster's nodes see the machine's GPUs)."""
    ctx, pairs = _stage(tmp_path, tiny_model, "gpu-ray", engine="ray",
                        ray={"num_workers": 1, "use_gpu": True, "resources_per_worker": {"CPU": 1, "GPU": 1}})
    trained = train_policy_task.fn(ctx, pairs)
    assert trained.result.n_steps == 4 and (ctx.store.local_path(trained.key) / layout.MERGED / "config.json").exists()


@pytest.mark.gpu
@pytest.mark.skipif(_cuda_devices() < 1, reason="needs CUDA")
def test_vllm_actor_samples(ray_cluster, tiny_model):
    pytest.importorskip("vllm")
    from tasks.sampling.backends import open_backend
    from tasks.sampling.requests import SampleRequest

    config = FlywheelConfig.model_validate({"model": {"base": tiny_model}, "generate": {
        "backend": "ray", "ray": {"num_actors": 1, "engine": "vllm", "gpus_per_actor": 1}}})
    requests = [SampleRequest((i, k), f"Write about topic {i}.", 0.8) for i in range(4) for k in range(3)]
    with open_backend(tiny_model, config.generate, config.model) as on_ray:
        answers = on_ray.sample(requests, 8, 8, seed=1, top_p=0.95)
    assert set(answers) == {r.key for r in requests}
