"""MLflow as its users read it, read back through MLflow's own client (a real sqlite store):
the experiment carries MLflow's kind tag for model training, a round's pairs are a dataset input of
its run, the champion's model version carries the round, the pairs' digest and the gate's decision,
and every link Flywheel prints opens the runs table or the round's run."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from flows.round_records import RoundSummary
from infra import layout
from infra.local_store import LocalArtifactStore
from infra.mlflow_links import mlflow_links, round_links
from infra.records import PreferencePair
from infra.settings import FlywheelConfig
from infra.tracking import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND, Tracker

LOOP = "lineage"


def sqlite_uri(folder: Path) -> str:
    return f"sqlite:///{folder / 'mlflow.db'}"


def write_pairs(store: LocalArtifactStore, key: str, n: int) -> str:
    """A filter stage holding ``n`` pairs; returns the sha256 of its pairs.jsonl."""
    pairs = [PreferencePair(prompt_id=f"p{i}", prompt=f"Write about {i}.", chosen="Short.", rejected="Far too long an answer.",
                            score_chosen=1.0, score_rejected=0.25, similarity=0.1) for i in range(n)]
    with store.stage(key) as out:
        (out / layout.PAIRS).write_text("".join(p.model_dump_json() + "\n" for p in pairs))
    return hashlib.sha256((store.local_path(key) / layout.PAIRS).read_bytes()).hexdigest()


def test_the_experiment_is_tagged_as_model_training(tmp_path):
    from mlflow import MlflowClient

    uri = sqlite_uri(tmp_path)
    client = MlflowClient(uri)
    created = Tracker(uri, "new").experiment_id
    assert client.get_experiment(created).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND == "custom_model_development"
    # One made before (by hand, or by an older Flywheel): tagged when Flywheel first uses it.
    older = client.create_experiment("older", artifact_location=(tmp_path / "older").as_uri())
    assert EXPERIMENT_KIND_TAG not in client.get_experiment(older).tags
    assert Tracker(uri, "older").experiment_id == older
    assert client.get_experiment(older).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
    # A kind someone chose is theirs.
    chosen = client.create_experiment("chosen", artifact_location=(tmp_path / "chosen").as_uri(),
                                      tags={EXPERIMENT_KIND_TAG: "genai_development"})
    Tracker(uri, "chosen")
    assert client.get_experiment(chosen).tags[EXPERIMENT_KIND_TAG] == "genai_development"


def test_the_pairs_are_the_runs_input_and_the_champion_version_carries_round_digest_and_decision(tmp_path):
    from mlflow import MlflowClient

    from infra.champion import crown
    from infra.round_lineage import decision_tags, pairs_dataset, pairs_digest

    config = FlywheelConfig.model_validate({"loop": LOOP, "storage": {"data_dir": str(tmp_path), "tracking_uri": sqlite_uri(tmp_path)}})
    store = LocalArtifactStore(tmp_path / "artifacts")
    tracker = Tracker.from_config(config)
    run_id = tracker.start_round(LOOP, 1, config)
    filter_key, train_key = layout.stage_key(LOOP, 1, layout.FILTER), layout.stage_key(LOOP, 1, layout.TRAIN)
    sha256 = write_pairs(store, filter_key, 3)
    with store.stage(train_key) as out:
        (out / layout.ADAPTER).mkdir()
        (out / layout.ADAPTER / "adapter_config.json").write_text("{}")

    tracker.log_dataset(pairs_dataset(store, filter_key, 1))
    gate = decision_tags(True, ["won the pairwise eval", "passed the capability-regression check"], pairs_digest(store, filter_key))
    champion = crown(store, tracker, config, train_key, 1, started_from=config.model.base, decision=gate)
    tracker.end_round()

    client = MlflowClient(config.storage.tracking_uri)
    [given] = client.get_run(run_id).inputs.dataset_inputs
    assert given.dataset.name == "pairs-round-001" and given.dataset.digest == sha256[:16]
    assert json.loads(given.dataset.source)["uri"] == f"{store.uri(filter_key)}/pairs.jsonl"
    assert json.loads(given.dataset.profile)["num_rows"] == 3
    assert {t.key: t.value for t in given.tags} == {"mlflow.data.context": "training"}
    version = client.get_model_version_by_alias(f"{LOOP}-policy", "champion")
    assert str(version.version) == champion.model_version and version.run_id == run_id
    assert version.tags["flywheel.round"] == "1" and version.tags["flywheel.pairs_digest"] == sha256[:16]
    assert version.tags["flywheel.decision"] == "promoted"
    assert version.tags["flywheel.decision_reasons"] == "won the pairwise eval; passed the capability-regression check"


def test_a_round_that_kept_no_pairs_still_names_its_empty_dataset(tmp_path):
    from infra.metric_queue import dataset_input
    from infra.round_lineage import pairs_dataset

    store = LocalArtifactStore(tmp_path / "artifacts")
    sha256 = write_pairs(store, "lineage/round-004/filter", 0)
    dataset = pairs_dataset(store, "lineage/round-004/filter", 4)
    assert (dataset["name"], dataset["digest"], json.loads(dataset["profile"])["num_rows"]) == ("pairs-round-004", sha256[:16], 0)
    assert dataset_input(json.loads(json.dumps(dataset)), "training").dataset.name == "pairs-round-004"  # it queues as JSON


def test_long_reasons_are_cut_to_fit_a_tag():
    from infra.round_lineage import REASONS_CHARS, decision_tags

    tags = decision_tags(True, ["x" * 3000, "y" * 3000], "abc")
    assert len(tags["flywheel.decision_reasons"]) == REASONS_CHARS and tags["flywheel.decision_reasons"].endswith("…")


def _summary(round_index: int, run_id: str, experiment_id: str = "4") -> RoundSummary:
    return RoundSummary(loop=LOOP, round=round_index, mlflow_run_id=run_id, mlflow_experiment_id=experiment_id, champion_before=0,
                        pairs_kept=3, promoted=False, reasons=["did not win"])


def test_links_open_the_runs_table_and_the_rounds_run():
    server = mlflow_links("http://mlflow.internal:5000/", "4", {"round 2": "abc"})
    assert server.runs_table == "http://mlflow.internal:5000/#/experiments/4/runs"
    assert server.runs == {"round 2": "http://mlflow.internal:5000/#/experiments/4/runs/abc"} and server.serve is None
    local = mlflow_links("sqlite:////data/mlflow.db", "1", {"round 1": "r1"})
    assert local.serve == "mlflow ui --backend-store-uri sqlite:////data/mlflow.db"
    assert local.runs_table == "http://127.0.0.1:5000/#/experiments/1/runs"
    assert local.runs["round 1"] == "http://127.0.0.1:5000/#/experiments/1/runs/r1"
    assert round_links("http://m:5000", [_summary(1, "r1", experiment_id="")]) is None  # recorded before rounds named it


@pytest.mark.parametrize("uri", ["http://mlflow.internal:5000", "sqlite:////data/mlflow.db"])
def test_the_cli_the_prefect_artifact_and_the_report_print_those_links(uri, tmp_path, capsys):
    from flows.cli import _print_outcome
    from flows.publish import round_markdown
    from flows.report import write_report

    base = "http://mlflow.internal:5000" if uri.startswith("http") else "http://127.0.0.1:5000"
    table, run = f"{base}/#/experiments/4/runs", f"{base}/#/experiments/4/runs/r2"
    config = FlywheelConfig.model_validate({"loop": LOOP, "storage": {"data_dir": str(tmp_path), "tracking_uri": uri}})
    _print_outcome(config, [_summary(2, "r2")])
    printed = capsys.readouterr().out
    assert table in printed and f"round 2: {run}" in printed
    assert ("mlflow ui --backend-store-uri sqlite:////data/mlflow.db" in printed) == uri.startswith("sqlite")
    assert f"[runs table]({table})" in round_markdown(_summary(2, "r2"), tracking_uri=uri)
    assert f"[round 2]({run})" in round_markdown(_summary(2, "r2"), tracking_uri=uri)
    write_report(LocalArtifactStore(tmp_path / "artifacts"), LOOP, [_summary(2, "r2")], tmp_path / "report.html", round_links(uri, [_summary(2, "r2")]))
    page = (tmp_path / "report.html").read_text()
    assert f'href="{table}"' in page and f'href="{run}"' in page
