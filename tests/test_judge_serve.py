"""The OpenAI judge inside a round, against `transformers serve` (a real OpenAI-compatible
server from transformers) serving the tiny model on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from infra.settings import FlywheelConfig
from tests.conftest import free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tiny_model, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    binary = Path(sys.executable).parent / "transformers"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(binary), "serve", tiny_model, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"transformers serve did not come up:\n{log.read_text()[-3000:]}")
                time.sleep(1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_openai_client_reaches_the_server(served, tiny_model):
    import openai

    client = openai.OpenAI(base_url=served, api_key="not-needed")
    answer = client.chat.completions.create(model=tiny_model, messages=[{"role": "user", "content": "Say hi."}], max_tokens=8)
    assert answer.choices[0].message.content is not None


def test_round_judges_through_the_served_model(served, tiny_model, prefect_harness, tmp_path):
    from mlflow import MlflowClient

    from flows.round import run_next_round
    from infra.store_factory import store_from_config
    from infra.tracking import tracking_uri

    prompts = tmp_path / "prompts.jsonl"
    lines = [{"id": f"p{i}", "text": f"Name colour {i}.", "topic": f"t{i}", "split": "eval" if i >= 3 else "train"} for i in range(5)]
    prompts.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    config = FlywheelConfig.model_validate(
        {
            "loop": "served",
            "model": {"base": tiny_model, "dtype": "fp32"},
            "prompts": {"source": "jsonl", "path": str(prompts), "n_train": 3, "n_eval": 2},
            "generate": {"n_candidates": 2, "max_new_tokens": 8, "batch_size": 8},
            # A random tiny model answers no valid verdict JSON: every pair fails, which must not crash the round.
            "judge": {"name": "openai", "openai": {"base_url": served, "model": tiny_model, "max_tokens": 24, "max_failure_share": 1.0, "max_in_flight": 4}},
            "storage": {"data_dir": str(tmp_path / "data")},
        }
    )
    summary = run_next_round(config)
    store = store_from_config(config.storage)
    assert store.is_complete("served/round-001/judge")
    metrics = MlflowClient(tracking_uri(config.storage)).get_run(summary.mlflow_run_id).data.metrics
    # 3 pairs x 2 orders, each answer unparseable and so repaired once: 12 requests, all answered.
    assert metrics["judge/requests"] == 12 and metrics["judge/repairs"] == 6
    assert metrics["judge/failed_pairs"] == 3 and metrics["judge/prompt_tokens"] > 0
    assert summary.pairs_kept == 0 and not summary.promoted
