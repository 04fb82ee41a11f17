"""The MLflow server goes away while the policy trains: training goes on, its per-step
metrics wait in the tracker's queue (and spill file), and they reach the server, once each,
when it returns.

The server is a real ``mlflow server`` reached through a TCP proxy (tests/proxy.py) that
cuts the first request carrying ``train/loss`` and then refuses every connection until the
train stage is complete. Assertions read the server directly, past the proxy.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.proxy import CuttingProxy
from tests.tiny_round import tiny_round_config, word_band_prompt_file

pytestmark = pytest.mark.slow


class MlflowServer:
    def __init__(self, folder: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder / "mlflow.log"
        mlflow = Path(sys.executable).parent / "mlflow"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
                 "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--artifacts-destination", str(folder / "artifacts")],
                env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, cwd=folder,
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )

    def wait(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"mlflow server exited:\n{self.log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"mlflow server did not answer at {self.url}:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: the server and its workers
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.url)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    try:
        server.wait()
        yield server
    finally:
        server.stop()


def spill_files(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "mlflow-pending").glob("*.jsonl"))


def test_a_tracker_queues_metrics_while_the_server_is_away_and_sends_them_when_it_returns(mlflow_server, tmp_path, caplog, monkeypatch):
    import infra.mlflow_retries
    from infra.settings import FlywheelConfig
    from infra.tracking import Tracker

    monkeypatch.setitem(infra.mlflow_retries.LONG, "attempts", 2)  # end_round's long wait, shortened
    proxy = CuttingProxy(mlflow_server.port, marker=b"never sent")
    tracker = Tracker(proxy.url, "queue", data_dir=tmp_path)
    run_id = tracker.start_run("queued", {}, FlywheelConfig())

    proxy.down.set()
    with caplog.at_level(logging.WARNING, logger="flywheel.tracking"):
        for step in (1, 2, 3):
            tracker.log_metrics({"train/loss": 0.7 - step / 100}, step=step)  # does not raise
        tracker.set_tags({"flywheel.decision": "rejected"})
        tracker.end_round("FINISHED")  # nor does the end of the run
    assert proxy.refused > 0
    [spill] = spill_files(tmp_path)
    assert spill.name.startswith(run_id)
    assert [json.loads(line)["kind"] for line in spill.read_text().splitlines()] == ["metrics"] * 3 + ["tags", "end"]
    assert any(str(spill) in r.getMessage() for r in caplog.records), "the warning names the spill file"
    assert mlflow_server.client().get_metric_history(run_id, "train/loss") == []

    # The process that queued them is gone; another one sends the spill file once the server is back.
    proxy.restore()
    later = Tracker(proxy.url, "queue", data_dir=tmp_path)
    assert later.queue.adopt_spill(spill)
    assert spill_files(tmp_path) == []
    run = mlflow_server.client().get_run(run_id)
    history = mlflow_server.client().get_metric_history(run_id, "train/loss")
    assert [(m.step, round(m.value, 2)) for m in history] == [(1, 0.69), (2, 0.68), (3, 0.67)]
    assert run.info.status == "FINISHED" and run.data.tags["flywheel.decision"] == "rejected"
    proxy.close()


def test_a_tracker_sends_its_queue_before_the_next_update(mlflow_server, tmp_path):
    from infra.settings import FlywheelConfig
    from infra.tracking import Tracker

    proxy = CuttingProxy(mlflow_server.port, marker=b"never sent")
    tracker = Tracker(proxy.url, "queue", data_dir=tmp_path)
    run_id = tracker.start_run("flushed", {}, FlywheelConfig())
    proxy.down.set()
    tracker.log_metrics({"train/loss": 0.69}, step=1)
    assert len(spill_files(tmp_path)) == 1
    proxy.restore()
    assert tracker.queue.flush()
    tracker.log_metrics({"train/loss": 0.5}, step=2)
    history = mlflow_server.client().get_metric_history(run_id, "train/loss")
    assert [m.step for m in history] == [1, 2] and spill_files(tmp_path) == []
    proxy.close()


def test_the_rounds_pairs_wait_in_the_queue_as_a_dataset_input_and_arrive_once(mlflow_server, tmp_path):
    """A dataset input is best-effort like the metrics: queued (and spilled) through an outage,
    sent when the server answers again. The experiment Flywheel created carries the training kind."""
    from infra.local_store import LocalArtifactStore
    from infra.round_lineage import pairs_dataset
    from infra.settings import FlywheelConfig
    from infra.tracking import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND, Tracker

    store = LocalArtifactStore(tmp_path / "artifacts")
    with store.stage("queue/round-002/filter") as out:
        (out / "pairs.jsonl").write_text(json.dumps({"prompt_id": "p0", "prompt": "Hi.", "chosen": "a", "rejected": "b",
                                                     "score_chosen": 1.0, "score_rejected": 0.0, "similarity": 0.1}) + "\n")
    proxy = CuttingProxy(mlflow_server.port, marker=b"never sent")
    tracker = Tracker(proxy.url, "datasets", data_dir=tmp_path)
    assert mlflow_server.client().get_experiment(tracker.experiment_id).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
    run_id = tracker.start_run("datasets", {}, FlywheelConfig())
    proxy.down.set()
    tracker.log_dataset(pairs_dataset(store, "queue/round-002/filter", 2))  # does not raise
    [spill] = spill_files(tmp_path)
    assert [json.loads(line)["kind"] for line in spill.read_text().splitlines()] == ["dataset"]
    assert mlflow_server.client().get_run(run_id).inputs.dataset_inputs == []
    proxy.restore()
    assert tracker.queue.flush() and spill_files(tmp_path) == []
    [given] = mlflow_server.client().get_run(run_id).inputs.dataset_inputs
    assert given.dataset.name == "pairs-round-002" and given.dataset.digest == store.manifest("queue/round-002/filter").files[0].sha256[:16]
    proxy.close()


def test_the_model_registry_retries_then_raises_rather_than_guess(mlflow_server, tmp_path, monkeypatch):
    from mlflow.exceptions import MlflowException

    import infra.mlflow_retries
    from infra.settings import FlywheelConfig
    from infra.tracking import Tracker

    monkeypatch.setitem(infra.mlflow_retries.LONG, "attempts", 2)
    proxy = CuttingProxy(mlflow_server.port, marker=b"never sent")
    tracker = Tracker(proxy.url, "registry", data_dir=tmp_path)
    tracker.start_run("registry", {}, FlywheelConfig())
    assert tracker.registry.champion_tags("registry-policy") is None  # no champion yet: a plain answer
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    assert tracker.registry.register_champion("registry-policy", tracker.run_id, adapter, {"round": "1"}) == "1"

    proxy.down.set()
    with pytest.raises(MlflowException):
        tracker.registry.champion_tags("registry-policy")  # not None: that would restart the loop from base
    with pytest.raises(MlflowException):
        tracker.registry.register_champion("registry-policy", tracker.run_id, adapter, {"round": "2"})
    proxy.restore()
    assert tracker.registry.champion_tags("registry-policy") == {"round": "1"}
    proxy.close()


def restore_after_training(proxy: CuttingProxy, manifest: Path, data_dir: Path, timeout: float, seen: dict) -> None:
    """Bring the server back once the train stage is complete (or after ``timeout`` s)."""
    if not proxy.cut_seen.wait(timeout):
        return
    deadline = time.monotonic() + timeout
    while not manifest.exists() and time.monotonic() < deadline:
        seen["spilled"] = seen.get("spilled") or bool(spill_files(data_dir))
        time.sleep(0.2)
    seen["trained"] = manifest.exists()
    proxy.restore()


@pytest.mark.stack
def test_a_round_survives_an_mlflow_outage_during_training(tiny_model, prefect_harness, mlflow_server, tmp_path):
    from flows.round import run_round

    proxy = CuttingProxy(mlflow_server.port, marker=b"train/loss")
    data = tmp_path / "data"
    config = tiny_round_config(
        tiny_model, "outage", word_band_prompt_file(tmp_path / "prompts.jsonl"), data,
        train={"epochs": 2, "batch_size": 1},  # several steps, all logged during the outage
        storage={"tracking_uri": proxy.url, "experiment": "outage"},
    )
    train_dir = data / "artifacts" / "outage" / "round-001" / "train"
    seen: dict = {}
    restorer = threading.Thread(target=restore_after_training, args=(proxy, train_dir / "manifest.json", data, 600, seen), daemon=True)
    restorer.start()

    summary = run_round(config=config, round_index=1)
    restorer.join(timeout=5)
    assert summary.reasons, "the round ended without a decision"
    assert proxy.cut_seen.is_set() and proxy.refused > 0, "the outage never happened"
    assert seen.get("trained") and seen.get("spilled"), "the outage did not last through training"

    # Read past the proxy: the train stage ran once, and every step it logged arrived once.
    client = mlflow_server.client()
    run_id = summary.mlflow_run_id
    if (train_dir / "log_history.json").exists():
        log_history = json.loads((train_dir / "log_history.json").read_text())
    else:
        log_history = json.loads((train_dir / "train_result.json").read_text())["log_history"]
    steps = [entry["step"] for entry in log_history if "loss" in entry]
    assert len(steps) >= 4
    logged = client.get_metric_history(run_id, "train/loss")
    assert sorted(m.step for m in logged) == steps, "a step is missing or was logged twice (training rerun?)"
    for entry in log_history:
        for key, value in entry.items():
            if isinstance(value, (int, float)) and key != "step":
                history = {m.step: m.value for m in client.get_metric_history(run_id, f"train/{key}")}
                assert history.get(entry["step"]) == pytest.approx(value, rel=1e-6), (key, entry["step"])

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert "train/final_loss" in run.data.metrics and "flywheel.decision" in run.data.tags
    assert spill_files(data) == []
    proxy.close()
