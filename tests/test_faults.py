"""The fault matrix's rows that need a whole round: each fault injected for real, then the store,
the MLflow runs, the champion and the history checked.

* a learning rate so large that the loss turns NaN on the tiny model: training stops, the round
  is rejected saying so, the champion stays;
* one byte flipped in a complete stage's object on S3 (moto), read by a machine without a cached
  copy: the checksum catches it, the stage is redone, training reads the good pairs;
* kill -9 of `flywheel round` in every stage, one process after the other (the chain in
  tests/killed_round.py): each rerun resumes where the last stopped.
"""

from __future__ import annotations

import math
import re
import shutil
import uuid
from datetime import datetime
from pathlib import Path

import pytest

from infra import layout
from infra.settings import FlywheelConfig
from infra.store_factory import store_from_config
from tests.killed_round import KILL_AT, ROUND_STAGES
from tests.tiny_round import tiny_round_config, word_band_prompt_file

pytestmark = pytest.mark.slow

def _mlflow(config: FlywheelConfig):
    from mlflow import MlflowClient

    from infra.tracking import tracking_uri

    return MlflowClient(tracking_uri(config.storage))


def _s3_config(tiny_model: str, s3_server, loop: str, root: Path, **sections) -> FlywheelConfig:
    bucket = f"{loop}-{uuid.uuid4().hex[:8]}"
    s3_server.client().create_bucket(Bucket=bucket)
    storage = {"artifact_root": f"s3://{bucket}/fw", "s3_endpoint_url": s3_server.url}
    return tiny_round_config(tiny_model, loop, word_band_prompt_file(root / "prompts.jsonl"), root / "data",
                             storage=storage, **sections)


def _assert_champion_and_history(store, config: FlywheelConfig, summary) -> None:
    """One history row for round 1, the summary's; the champion is round 1's policy exactly when it was promoted."""
    from flows.round_records import read_history

    [row] = read_history(store, config.loop)
    assert (row.round, row.mlflow_run_id, row.promoted) == (1, summary.mlflow_run_id, summary.promoted)
    champion = store.read_json(f"{config.loop}/champion.json")
    if summary.promoted:
        assert champion["round"] == 1
        version = _mlflow(config).get_model_version_by_alias(f"{config.loop}-policy", "champion")
        assert version.run_id == summary.mlflow_run_id
    else:
        assert champion is None


def test_non_finite_loss_stops_training_and_rejects_the_round(tiny_model, prefect_harness, tmp_path):
    from mlflow.exceptions import MlflowException

    from flows.round import run_next_round

    # Step 1 moves the LoRA weights by 1e30 (no warm-up), so step 2's forward overflows.
    config = tiny_round_config(tiny_model, "nan", word_band_prompt_file(tmp_path / "prompts.jsonl"), tmp_path / "data",
                               train={"learning_rate": [1e30], "batch_size": 1, "epochs": 2})
    summary = run_next_round(config)

    assert summary.round == 1 and not summary.promoted and summary.train_final_loss is None
    [reason] = summary.reasons
    assert "training stopped at step" in reason and "the loss diverged" in reason, reason
    store = store_from_config(config.storage)
    assert store.manifest("nan/round-001/train") is None, "a diverged training was kept"
    assert not list(Path(store.uri("")).glob(".staging-*")), "the stopped stage left its staging folder"
    decision = store.read_json("nan/round-001/promote/decision.json")
    assert decision == {"promote": False, "reasons": [reason]}
    for stage in ("evaluate", "regression"):
        assert store.manifest(f"nan/round-001/{stage}") is None, f"{stage} ran without a challenger"
    assert store.read_json("nan/champion.json") is None, "the champion moved"
    _assert_champion_and_history(store, config, summary)

    client = _mlflow(config)
    run = client.get_run(summary.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.data.tags["flywheel.decision"] == "rejected"
    assert run.data.metrics["promote/promoted"] == 0.0
    # Training stopped at the first NaN step, before its end (one pair a step, two epochs); the
    # finite steps before it were logged (a NaN is not: the tracker drops it).
    stopped = int(re.search(r"step (\d+)", reason).group(1))
    assert 1 < stopped < 2 * summary.pairs_kept, "training ran to its end"
    norms = client.get_metric_history(run.info.run_id, "train/grad_norm")
    assert norms and all(math.isfinite(m.value) for m in norms) and max(m.step for m in norms) < stopped
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias("nan-policy", "champion")


def test_corrupted_s3_object_is_detected_and_its_stage_redone(tiny_model, s3_server, prefect_harness, tmp_path):
    from flows.round import run_next_round, run_round
    from flows.stage_runner import StageResult, inputs_hash
    from infra import layout
    from infra.records import Champion

    config = _s3_config(tiny_model, s3_server, "corrupt", tmp_path)
    store = store_from_config(config.storage)
    first = run_next_round(config)
    before = {s: store.manifest(f"corrupt/round-001/{s}") for s in ROUND_STAGES}

    # One byte of the kept pairs flipped in the bucket, same size.
    bucket, name = config.storage.artifact_root.removeprefix("s3://").split("/")[0], "fw/corrupt/round-001/filter/pairs.jsonl"
    good = s3_server.client().get_object(Bucket=bucket, Key=name)["Body"].read()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0x01
    s3_server.client().put_object(Bucket=bucket, Key=name, Body=bytes(bad))
    # A machine without the cached copy (the cache lost, or a second machine) resumes the round,
    # training again (another seed) on the pairs it reads.
    shutil.rmtree(Path(config.storage.data_dir) / "s3-cache")
    reseeded = config.model_copy(update={"train": config.train.model_copy(update={"seed": 1})})
    summary = run_round(config=reseeded, round_index=1)

    store = store_from_config(config.storage)
    after = {s: store.manifest(f"corrupt/round-001/{s}") for s in ROUND_STAGES}
    for stage in ("prompts", "generate", "judge"):
        assert after[stage] == before[stage], f"{stage} was redone though it was intact"
    assert after["filter"].created_at != before["filter"].created_at, "the corrupted stage was not redone"
    assert after["filter"].files == before["filter"].files, "the redone stage differs from the intact one"
    assert s3_server.client().get_object(Bucket=bucket, Key=name)["Body"].read() == good
    # Training read the redone pairs: its identity is the intact files' checksums.
    assert after["train"].created_at != before["train"].created_at
    started_from = Champion.model_validate(store.read_json(layout.champion_before_key("corrupt", 1))).checkpoint
    assert after["train"].input_hash == inputs_hash(store, [StageResult("corrupt/round-001/filter", None)], started_from)
    assert first.round == 1
    _assert_champion_and_history(store, config, summary)


@pytest.mark.stack
def test_round_killed_in_every_stage_resumes_where_it_stopped(killed_round_chain):
    """Killed in generate, judge, filter, train, evaluate, regression, promote and publish, one
    process after the other (tests/killed_round.py), round 1 goes on where it stopped each time."""
    chain = killed_round_chain
    loop = chain.config.loop
    kills = {kill.stage: kill for kill in chain.kills}
    first_seen = {}  # a stage's manifest when it was first seen complete
    for i, kill in enumerate(chain.kills):
        at = ROUND_STAGES.index(kill.stage)
        done, rest = ROUND_STAGES[:at], ROUND_STAGES[at:]
        for stage in done:
            assert kill.manifests[stage] is not None, f"killed in {kill.stage}: {stage} is not complete"
            # Same manifest (checksums, creation time) as when first seen: not redone.
            assert kill.manifests[stage] == first_seen.setdefault(stage, kill.manifests[stage]), f"{stage} was redone"
        assert all(kill.manifests[s] is None for s in rest), f"the kill came after {kill.stage} completed"
        assert not [row for row in kill.history if row["round"] == 1], f"killed in {kill.stage}: round 1 has a history row"
        if i:  # the stage killed before was redone by this run, not kept half-written
            before = chain.kills[i - 1]
            assert _created(kill.manifests[before.stage]) > before.killed_at, f"{before.stage} is not the rerun's"
        if KILL_AT[kill.stage] == "manifest":
            # Half-written: its files are in the bucket, the manifest that would mark it complete is not.
            assert kill.objects and layout.MANIFEST not in kill.objects, (kill.stage, kill.objects)
    assert "{'loss'" in kills[layout.TRAIN].log and "train_runtime" not in kills[layout.TRAIN].log, "the kill in train came after training ended"
    # The reference pass ran once: the run killed in training had stored its log-probs, the rerun read them.
    assert "no reference pass" not in kills[layout.TRAIN].log
    assert "reference's log-probs read from" in kills[layout.EVALUATE].log, "the rerun redid the reference pass"

    summary = chain.summary
    assert summary.round == 1, "the rerun must continue round 1"
    for stage, manifest in first_seen.items():
        assert chain.manifests[stage] == manifest, f"{stage} was redone by the final run"
    last = chain.kills[-1]
    assert _created(chain.manifests[last.stage]) > last.killed_at, f"{last.stage} is not the final run's"
    # Every stage reads back whole, checksum-verified, on a machine without the cached copies.
    shutil.rmtree(Path(chain.config.storage.data_dir) / "s3-cache")
    fresh = store_from_config(chain.config.storage)
    for stage in ROUND_STAGES:
        fresh.local_path(layout.stage_key(loop, 1, stage))
    # One history row, the final run's.
    [row] = chain.history
    assert (row["round"], row["mlflow_run_id"], row["promoted"]) == (1, summary.mlflow_run_id, True)
    # The champion: untouched until promote; the run killed in promote crowned round 1's policy
    # (registry version 1) before its decision was stored; the run killed in publishing decided
    # again and crowned it again (version 2, which the alias marks); the final run reused that
    # decision and crowned nothing. The store's pointer always names the alias's version.
    assert all(kill.champion is None for kill in chain.kills[: list(kills).index(layout.PROMOTE)])
    assert (kills[layout.PROMOTE].champion["round"], kills[layout.PROMOTE].champion["model_version"]) == (1, "1")
    assert (kills[layout.FIGURES].champion["round"], kills[layout.FIGURES].champion["model_version"]) == (1, "2")
    assert chain.champion_version == ("2", kills[layout.FIGURES].mlflow_run_id)
    assert chain.champion == kills[layout.FIGURES].champion
    # Each killed process's MLflow run never ended; the final one's finished.
    assert chain.run_statuses == ["RUNNING"] * len(chain.kills) + ["FINISHED"]
    assert len({kill.mlflow_run_id for kill in chain.kills} | {summary.mlflow_run_id}) == len(chain.kills) + 1


def _created(manifest) -> float:
    return datetime.fromisoformat(manifest.created_at).timestamp()
