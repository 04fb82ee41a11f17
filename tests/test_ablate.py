"""The ablation and the beta sweep through the real Prefect flow (a temporary Prefect API) on the
tiny model, after one real round: table, MLflow parent and child runs, figure, recommendation;
a rerun redoes only the cell that did not finish; a failing cell is reported, not fatal; the
loop adopts a recommended cell."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from flows.ablate import AblationSpec, adopt_ablation, read_ablations, run_ablation
from infra import layout
from infra.store_factory import store_from_config
from tests.tiny_round import tiny_round_config, word_band_prompt_file

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def config(tiny_model, tmp_path_factory, prefect_harness):
    from flows.loop import run_loop

    root = tmp_path_factory.mktemp("ablate")
    prompts = word_band_prompt_file(root / "prompts.jsonl")
    # A third of the pairs held out, so every cell has held-out margins to show.
    config = tiny_round_config(tiny_model, "ablatetest", prompts, root / "data", train={"heldout_share": 0.34})
    run_loop(config=config, rounds=1)
    return config


@pytest.fixture(scope="module")
def first(config):
    return run_ablation(config=config, spec=AblationSpec(objectives=["dpo", "simpo"], ranks=[4, 2]))


def _children(config, parent_id):
    from mlflow import MlflowClient

    from infra.tracking import tracking_uri

    client = MlflowClient(tracking_uri(config.storage))
    experiment = client.get_experiment_by_name(config.storage.experiment)
    return client.search_runs([experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")


def _prefect_table(key):
    import asyncio

    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def read():
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))

    found = asyncio.run(read())
    return [json.loads(a.data) if isinstance(a.data, str) else a.data for a in found]


def test_two_by_two_gives_table_runs_figure_and_recommendation(config, first):
    store = store_from_config(config.storage)
    assert first.number == 1 and first.spec.round == 1
    assert [c.cell.name for c in first.cells] == ["dpo-r4-betadefault", "dpo-r2-betadefault", "simpo-r4-betadefault",
                                                  "simpo-r2-betadefault"]
    assert all(c.status == "done" for c in first.cells), [c.error for c in first.cells]
    for c in first.cells:
        assert c.win_rate is not None and c.win_rate_low <= c.win_rate <= c.win_rate_high
        assert c.heldout_margin is not None and c.train_margin is not None and c.epochs
    assert {c.beta for c in first.cells} == {0.1, 2.0}  # DPO's train.beta, SimPO's train.simpo.beta
    assert first.recommendation.reasons
    # MLflow: the parent run and one child per cell.
    children = _children(config, first.mlflow_run_id)
    assert sorted(r.data.tags["flywheel.ablation_cell"] for r in children) == sorted(c.cell.name for c in first.cells)
    assert all(r.data.metrics.get("evaluate/win_rate") is not None for r in children)
    # The figure, the table and the result in the store; the Prefect table artifact.
    summary = store.local_path(f"{layout.ablation_key(config.loop, 1)}/summary")
    assert (summary / "margins.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "dpo" in (summary / "table.md").read_text() and "Recommendation" in (summary / "table.md").read_text()
    assert read_ablations(store, config.loop)[0].number == 1
    tables = _prefect_table("ablatetest-ablation")
    assert tables and len(tables[0]) == 4 and tables[0][0]["objective"] == "dpo"
    # The DPO cells shared one reference pass: the second read the first one's log-probs.
    shared = store.read_json(f"{layout.ablation_key(config.loop, 1)}/reference_logps.json")
    assert shared and len(shared["train"][0]) > 0


def test_a_rerun_redoes_only_the_cell_that_did_not_finish(config, first):
    store = store_from_config(config.storage)
    cell_root = Path(store.uri(layout.ablation_key(config.loop, 1)))  # a local store: the folder itself
    killed = "simpo-r2-betadefault"
    # As if killed while evaluating: its evaluate stage never committed, its cell record never written.
    shutil.rmtree(cell_root / killed / "evaluate")
    (cell_root / killed / "cell.json").unlink()
    trained = (cell_root / killed / "train" / "train_result.json").read_text()
    before = {c: (cell_root / c / "cell.json").read_text() for c in ("dpo-r4-betadefault", "dpo-r2-betadefault", "simpo-r4-betadefault")}
    # Every cell met the same champion answers, generated once: mark the cached copy, and the
    # redone cell's eval must show the mark (it read the answers, it did not generate them).
    [cache] = (Path(store.uri(config.loop)) / "champion_answers").iterdir()
    cached = json.loads(cache.read_text())
    first_champion = next(json.loads(line) for line in (cell_root / "dpo-r4-betadefault" / "evaluate" / "completions.jsonl").open()
                          if json.loads(line)["policy"] == "champion")
    assert cached["held_out"][0]["text"] == first_champion["text"]
    cached["held_out"][0]["text"] = "ANSWER FROM THE CACHE"
    cache.write_text(json.dumps(cached))
    again = run_ablation(config=config, spec=AblationSpec(objectives=["dpo", "simpo"], ranks=[4, 2]))
    assert again.number == 1 and all(c.status == "done" for c in again.cells)
    assert {c: (cell_root / c / "cell.json").read_text() for c in before} == before  # not run again
    assert (cell_root / killed / "train" / "train_result.json").read_text() == trained  # its training resumed past
    assert (cell_root / killed / "cell.json").exists()
    redone = [json.loads(line) for line in (cell_root / killed / "evaluate" / "completions.jsonl").open()]
    assert [r["text"] for r in redone if r["policy"] == "champion"][0] == "ANSWER FROM THE CACHE"
    assert len(_children(config, again.mlflow_run_id)) == 1  # one cell ran


def test_a_failing_cell_is_reported_and_redone_once_fixed(config, tmp_path):
    feedback = tmp_path / "feedback.jsonl"
    broken = config.model_copy(update={"train": config.train.model_copy(update={"kto": config.train.kto.model_copy(
        update={"feedback_files": [feedback]})})})
    spec = AblationSpec(objectives=["dpo", "kto"], ranks=[4])
    result = run_ablation(config=broken, spec=spec)
    status = {c.cell.objective: c for c in result.cells}
    assert status["dpo"].status == "done"
    assert status["kto"].status == "failed" and "feedback.jsonl" in status["kto"].error
    feedback.write_text(json.dumps({"prompt": "Say hi.", "completion": "Hi there.", "label": True}) + "\n")
    again = run_ablation(config=broken, spec=spec)
    assert all(c.status == "done" for c in again.cells)
    assert len(_children(config, again.mlflow_run_id)) == 1  # only the failed cell ran again


def test_beta_sweep_reports_drift_and_degeneration(config):
    result = run_ablation(config=config, spec=AblationSpec(objectives=["dpo"], ranks=[4], betas=[0.05, 0.5], sweep=True))
    assert [c.beta for c in result.cells] == [0.05, 0.5] and all(c.status == "done" for c in result.cells)
    assert all(c.mean_logratio is not None for c in result.cells)
    assert all(c.kl_to_start is not None and c.kl_to_start == c.kl_to_start for c in result.cells)  # measured, not NaN
    from flows.ablate import ablation_table

    table = ablation_table(result)
    assert "mean log-ratio" in table.header and "KL to start" in table.header and "degeneration" in table.header


def test_loop_adopts_the_recommended_cell(config):
    store = store_from_config(config.storage)
    number = read_ablations(store, config.loop)[0].number
    adopted, advice = adopt_ablation(config, number)
    assert adopted.train.adopted_ablation == number
    if advice.cell is not None:
        assert adopted.train.objective == [advice.cell.objective] and adopted.train.lora_r == advice.cell.lora_r
    else:
        assert adopted.train.objective == config.train.objective
