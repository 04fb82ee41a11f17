"""Resuming rounds on S3: the bucket holds every stage a resumed round wrote, and a changed stage
config reruns that stage and those after it, not those before. The round is the kill chain's
(killed in every stage, tests/killed_round.py), which test_faults.py checks resumed right."""

from __future__ import annotations

import pytest

from infra import layout
from infra.store_factory import store_from_config
from tests.killed_round import ROUND_STAGES

pytestmark = [pytest.mark.slow, pytest.mark.stack]  # `make test-stack`



def _manifests(chain):
    store = store_from_config(chain.config.storage)
    return {s: store.manifest(layout.stage_key(chain.config.loop, 1, s)) for s in ROUND_STAGES}


def test_bucket_holds_every_stage_with_its_manifest(killed_round_chain, s3_server):
    chain = killed_round_chain
    keys = {o["Key"] for page in s3_server.client().get_paginator("list_objects_v2").paginate(Bucket=chain.bucket)
            for o in page.get("Contents", [])}
    for stage, manifest in _manifests(chain).items():
        folder = f"fw/{layout.stage_key(chain.config.loop, 1, stage)}"
        assert f"{folder}/manifest.json" in keys
        assert {f"{folder}/{f.path}" for f in manifest.files} <= keys


def test_changed_stage_config_reruns_it_and_later_stages_only(killed_round_chain):
    chain = killed_round_chain
    before = _manifests(chain)
    changed = chain.config.model_copy(
        update={
            "filter": chain.config.filter.model_copy(update={"similarity_threshold": 0.95}),
            "train": chain.config.train.model_copy(update={"epochs": 1.0}),
        }
    )
    from flows.round import run_round

    run_round(config=changed, round_index=1)
    after = _manifests(chain)
    for stage in ["prompts", "generate", "judge"]:
        assert after[stage] == before[stage], f"{stage} was redone though its inputs and config did not change"
    assert after["filter"].config_hash != before["filter"].config_hash
    for stage in ["filter", "train", "evaluate", "regression"]:
        assert after[stage].created_at != before[stage].created_at, f"{stage} was not redone"
