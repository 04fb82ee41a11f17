"""Whole rounds through the real Prefect flow (a temporary Prefect API) on the tiny model.

Checks that every stage left a complete artifact folder and its MLflow figures, that the
flow runs are named after loop and round, and that promotion followed the gate: the
decision recomputed from the stored eval and regression results is the one recorded,
and a rejected round leaves the champion where it was.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from infra.settings import FlywheelConfig
from infra.store_factory import store_from_config
from tasks.evaluate import PairwiseResult
from tasks.promote import decide_promotion
from tasks.regression import RegressionResult
from tasks.train import TrainResult
from tests.tiny_round import tiny_round_config, word_band_prompt_file

pytestmark = pytest.mark.slow

STAGES = ["config", "prompts", "generate", "judge", "filter", "train", "evaluate", "regression", "promote", "figures"]
# A metric each stage must have logged to the round's MLflow run.
STAGE_METRICS = [
    "prompts/n_train", "generate/tokens_per_s", "judge/n_comparisons", "filter/n_kept",
    "train/loss", "train/rewards/accuracies", "train/initial_loss", "evaluate/win_rate",
    "evaluate/challenger_constraint_rate", "evaluate/lc_win_rate", "evaluate/challenger_failure/any",
    "regression/passed", "regression/arc_easy/delta", "promote/promoted",
]


@pytest.fixture(scope="module")
def config(tiny_model, tmp_path_factory) -> FlywheelConfig:
    root = tmp_path_factory.mktemp("flow")
    prompts = word_band_prompt_file(root / "prompts.jsonl", text="Write a short note about topic {i}.", topic="topic{i}")
    return tiny_round_config(tiny_model, "flowtest", prompts, root / "data", promotion={"max_failure_increase": 1.0})


@pytest.fixture(scope="module")
def two_rounds(config, prefect_harness):
    from flows.loop import run_loop

    # Round 1 passes a lenient gate (any win rate above 0), round 2 a gate nothing passes
    # (a win rate above 1.0), so both branches of the gate run.
    first = run_loop(config=_with_gate(config, 0.0), rounds=1)
    second = run_loop(config=_with_gate(config, 1.0), rounds=1)
    return first + second


def _with_gate(config: FlywheelConfig, min_win_rate: float) -> FlywheelConfig:
    return config.model_copy(update={"promotion": config.promotion.model_copy(update={"min_win_rate": min_win_rate})})


def pairs_sha256(config: FlywheelConfig, round_index: int) -> str:
    manifest = store_from_config(config.storage).manifest(f"flowtest/round-{round_index:03d}/filter")
    return next(f.sha256 for f in manifest.files if f.path == "pairs.jsonl")


def test_every_stage_wrote_a_complete_artifact_folder(config, two_rounds):
    store = store_from_config(config.storage)
    first = two_rounds[0]
    assert first.round == 1 and first.pairs_kept >= 2
    for stage in STAGES:
        key = f"flowtest/round-001/{stage}"
        manifest = store.manifest(key)
        assert manifest is not None, f"stage {stage} has no manifest"
        for entry in manifest.files:
            assert (store.local_path(key) / entry.path).stat().st_size == entry.size
    train = store.local_path("flowtest/round-001/train")
    assert (train / "merged" / "config.json").exists() and (train / "adapter" / "adapter_config.json").exists()
    from datasets import load_from_disk

    pairs = load_from_disk(str(store.local_path("flowtest/round-001/filter") / "train"))
    assert set(pairs.column_names) >= {"prompt", "chosen", "rejected"} and len(pairs) == first.pairs_kept


def test_every_stage_logged_its_figures_to_the_round_run(config, two_rounds):
    from mlflow import MlflowClient

    from infra.tracking import tracking_uri

    client = MlflowClient(tracking_uri(config.storage))
    run = client.get_run(two_rounds[0].mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "flowtest-round-001"
    missing = [m for m in STAGE_METRICS if m not in run.data.metrics]
    assert not missing, f"metrics not logged: {missing}"
    stages = ("prompts", "generate", "judge", "filter", "train", "evaluate", "regression", "promote")
    assert all(run.data.metrics[f"{stage}/peak_rss_mb"] > 0 for stage in stages)
    assert run.data.params["train.lora_r"] == "4"
    steps = client.get_metric_history(run.info.run_id, "train/loss")
    assert len(steps) >= 1
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id, "figures")) == ["figures/loop.png", "figures/training.png"]
    # MLflow's UI opens the experiment on its runs, and the run names the pairs it trained on.
    assert client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    assert two_rounds[0].mlflow_experiment_id == run.info.experiment_id
    [pairs] = run.inputs.dataset_inputs
    assert pairs.dataset.name == "pairs-round-001" and pairs.dataset.digest == pairs_sha256(config, 1)[:16]


def test_each_round_saved_its_effective_config(config, two_rounds):
    """config.yaml beside the round's artifacts and in its MLflow run, with what the environment
    decided (artifact root, tracking URI) resolved, and loadable as the config it ran with."""
    import yaml
    from mlflow import MlflowClient

    from infra.settings import FlywheelConfig
    from infra.tracking import tracking_uri

    saved = yaml.safe_load((store_from_config(config.storage).local_path("flowtest/round-001/config") / "config.yaml").read_text())
    assert saved["storage"]["artifact_root"] == config.storage.resolved_artifact_root()
    assert saved["storage"]["tracking_uri"] == tracking_uri(config.storage)
    assert FlywheelConfig.model_validate(saved).train == config.train
    client = MlflowClient(tracking_uri(config.storage))
    logged = client.download_artifacts(two_rounds[0].mlflow_run_id, "config.yaml")
    assert yaml.safe_load(open(logged).read()) == saved


def test_flow_runs_are_named_after_loop_and_round(two_rounds):
    from prefect import get_client

    async def names():
        async with get_client() as client:
            runs = [await client.read_flow_run(s.flow_run_id) for s in two_rounds]
            return [(r.name, r.state.is_completed()) for r in runs]

    assert asyncio.run(names()) == [("flowtest-round-001", True), ("flowtest-round-002", True)]


def test_promotion_followed_the_gate(config, two_rounds):
    store = store_from_config(config.storage)
    for summary, gate in ((two_rounds[0], 0.0), (two_rounds[1], 1.0)):
        promotion = _with_gate(config, gate).promotion
        stage = lambda name: store.local_path(f"flowtest/round-{summary.round:03d}/{name}")  # noqa: E731
        pairwise = PairwiseResult.model_validate_json((stage("evaluate") / "pairwise.json").read_text())
        regression = RegressionResult.model_validate_json((stage("regression") / "regression.json").read_text())
        recorded = json.loads((stage("promote") / "decision.json").read_text())
        trained = TrainResult.model_validate_json((stage("train") / "train_result.json").read_text())
        expected = decide_promotion(pairwise, regression, promotion, trained.alarms)
        assert recorded["promote"] == expected.promote == summary.promoted
        assert recorded["reasons"] == expected.reasons

    first, second = two_rounds
    champion = store.read_json("flowtest/champion.json")
    assert first.champion_before == 0
    # Round 1 (a tie at worst against a 0.0 bar, benchmarks unchanged within 2 points of 4 items
    # or refused) either moved the champion or says why not; round 2 started from what it left.
    if first.promoted:
        assert champion["round"] == 1 and champion["checkpoint"].endswith("round-001/train/merged")
        assert second.champion_before == 1
        # The registry holds the promoted policy, its lineage, and the champion alias.
        from mlflow import MlflowClient

        from infra.tracking import tracking_uri

        version = MlflowClient(tracking_uri(config.storage)).get_model_version_by_alias("flowtest-policy", "champion")
        assert str(version.version) == champion["model_version"] and version.run_id == first.mlflow_run_id
        assert version.tags["flywheel.round"] == "1" and version.tags["flywheel.merged_uri"] == champion["checkpoint"]
        assert version.tags["flywheel.code_version"]
        assert version.tags["flywheel.pairs_digest"] == pairs_sha256(config, 1)[:16] and version.tags["flywheel.decision"] == "promoted"
        assert version.tags["flywheel.decision_reasons"] == "; ".join(first.reasons)
    else:
        assert champion is None and second.champion_before == 0
    assert not second.promoted
    # The rejection moved nothing.
    assert store.read_json("flowtest/champion.json") == champion
    history = store.read_json("flowtest/history.json")
    assert [r["round"] for r in history] == [1, 2]


def test_cli_round_runs_the_next_round_and_history_lists_all(config, two_rounds, tmp_path, capsys):
    import yaml

    from flows.cli import main

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(_with_gate(config, 1.0).model_dump(mode="json")))
    assert main(["round", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "round 3: rejected" in out and "artifacts:" in out
    assert main(["history", "--config", str(path)]) == 0
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:]]
    assert rows == ["1", "2", "3"]
    assert main(["report", "--config", str(path), "--out", str(tmp_path / "report.html")]) == 0
    page = (tmp_path / "report.html").read_text()
    assert page.count("<h3>Round") == 3 and page.count("data:image/png;base64,") >= 4  # loop + 3 training figures


def test_rounds_publish_prefect_artifacts(two_rounds):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def of_round_two(key):
        async with get_client() as client:
            found = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
            return [a for a in found if str(a.flow_run_id) == two_rounds[1].flow_run_id]

    [summary] = asyncio.run(of_round_two("flowtest-round-summary"))
    assert summary.type == "markdown" and "round 2" in summary.data and "rejected" in summary.data
    # Both figures inline, so the Prefect UI shows them beside the decision.
    assert "### DPO training" in summary.data and "### across rounds" in summary.data
    assert summary.data.count("](data:image/png;base64,iVBORw0KGgo") == 2
    [table] = asyncio.run(of_round_two("flowtest-history"))
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert [r["round"] for r in rows] == [1, 2]
    assert rows[1]["decision"] == "rejected"


def test_compare_measures_a_trained_round_against_the_base_model(config, two_rounds, tmp_path, capsys):
    import yaml
    from mlflow import MlflowClient

    from flows.cli import main
    from infra.records import Completion, read_jsonl
    from infra.tracking import tracking_uri

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    assert main(["compare", "--config", str(path), "--round", "1", "--against", "0"]) == 0
    out = capsys.readouterr().out
    assert "round 1 against round 0" in out and "win rate" in out
    store = store_from_config(config.storage)
    key = "flowtest/compare/round-001-vs-round-000"
    assert store.is_complete(key)
    result = PairwiseResult.model_validate_json((store.local_path(key) / "pairwise.json").read_text())
    outcomes = [json.loads(line)["outcome"] for line in (store.local_path(key) / "verdicts.jsonl").read_text().splitlines()]
    assert result.n == len(outcomes) == config.prompts.n_eval
    assert (result.wins, result.ties, result.losses) == (outcomes.count("win"), outcomes.count("tie"), outcomes.count("loss"))
    # The base model's answers here are the ones round 1's own pairwise eval saw from its champion (greedy).
    base = [c for c in read_jsonl(store.local_path(key) / "completions.jsonl", Completion) if c.policy == "champion"]
    round_one = [c for c in read_jsonl(store.local_path("flowtest/round-001/evaluate") / "completions.jsonl", Completion) if c.policy == "champion"]
    assert [c.text for c in base] == [c.text for c in round_one]
    # Benchmarks of both under the promotion gate's tolerance.
    regression = RegressionResult.model_validate_json((store.local_path(key) / "regression.json").read_text())
    assert [t.task for t in regression.tasks] == config.regression.tasks
    before = RegressionResult.model_validate_json((store.local_path("flowtest/round-001/regression") / "regression.json").read_text())
    assert [(t.before, t.after) for t in regression.tasks] == [(t.before, t.after) for t in before.tasks]
    # The answers to read next to the scores: the largest gains and losses, printed and stored.
    assert "gained most" in out and "lost most" in out
    assert "gained most" in (store.local_path(key) / "examples.md").read_text()
    [recorded] = store.read_json("flowtest/comparisons.json")
    assert recorded["challenger_round"] == 1 and recorded["baseline_round"] == 0
    run = MlflowClient(tracking_uri(config.storage)).get_run(recorded["mlflow_run_id"])
    assert run.info.run_name == "flowtest-compare-round-001-vs-round-000" and run.info.status == "FINISHED"
    assert run.data.metrics["compare/win_rate"] == pytest.approx(result.win_rate)
    assert run.data.metrics["compare/regression_passed"] == float(regression.passed)
    # The report shows it.
    assert main(["report", "--config", str(path), "--out", str(tmp_path / "report.html")]) == 0
    assert "Against earlier policies" in (tmp_path / "report.html").read_text()
    # A round that trained nothing is named in a clear error.
    assert main(["compare", "--config", str(path), "--round", "9"]) == 2
    assert "round 9" in capsys.readouterr().err
