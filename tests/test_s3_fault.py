"""The S3 server goes away in the middle of a round for longer than `storage.s3_retry_s`: the
round fails with a clear message, nothing half-written is marked complete, and the rerun after
the server returns finishes, riding out a 30 s outage on the way.

The fault goes through a real socket: the round talks to moto through a TCP proxy that
drops the connection carrying the upload of the judge stage's file and then refuses
every connection until it is restored."""

from __future__ import annotations

import uuid

import pytest

from infra.store_factory import store_from_config
from tests.proxy import CuttingProxy
from tests.tiny_round import tiny_round_config, word_band_prompt_file

pytestmark = [pytest.mark.slow, pytest.mark.stack]  # `make test-stack`


def test_round_survives_the_s3_server_going_away(tiny_model, s3_server, prefect_harness, tmp_path):
    from flows.round import run_next_round

    bucket = f"fault-{uuid.uuid4().hex[:8]}"
    s3_server.start()
    s3_server.client().create_bucket(Bucket=bucket)
    proxy = CuttingProxy(s3_server.port, marker=b"/round-001/judge/judgments.jsonl")
    # Retried for 5 s only, so the outage outlasts the retries.
    config = tiny_round_config(
        tiny_model, "fault", word_band_prompt_file(tmp_path / "prompts.jsonl"), tmp_path / "data",
        storage={"artifact_root": f"s3://{bucket}/fw", "s3_endpoint_url": f"http://127.0.0.1:{proxy.port}", "s3_retry_s": 5},
    )
    with pytest.raises(Exception) as failure:
        run_next_round(config)
    assert proxy.cut_seen.is_set(), "the round never reached the judge upload"
    message = str(failure.value)
    assert f"s3://{bucket}/fw/fault/round-001" in message and f"127.0.0.1:{proxy.port}" in message

    # Straight to moto, past the proxy: the judge stage is not marked complete.
    direct = store_from_config(config.storage.model_copy(update={"s3_endpoint_url": s3_server.url}))
    assert direct.manifest("fault/round-001/judge") is None
    generated = direct.manifest("fault/round-001/generate")
    assert generated is not None

    # The rerun, with the default 120 s of retries, meets a 30 s outage as it uploads the
    # filter stage: it waits the outage out and finishes the round.
    proxy.restore()
    outage = CuttingProxy(s3_server.port, marker=b"/round-001/filter/", outage_s=30)
    storage = config.storage.model_copy(update={"s3_endpoint_url": outage.url, "s3_retry_s": 120.0})
    summary = run_next_round(config.model_copy(update={"storage": storage}))
    assert outage.cut_seen.is_set() and outage.restored_at - outage.down_at >= 30
    assert outage.refused > 1, "nothing was tried during the outage"
    assert summary.round == 1
    assert direct.manifest("fault/round-001/generate") == generated, "generation was redone"
    for stage in ["judge", "filter", "train", "evaluate", "regression", "promote"]:
        assert direct.is_complete(f"fault/round-001/{stage}"), stage

