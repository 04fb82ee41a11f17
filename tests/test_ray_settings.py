"""The Ray settings and what a round records of the cluster, without a cluster (tests/test_ray.py has one)."""

from __future__ import annotations

import pytest

from infra.ray_cluster import public_address, ray_storage, uses_ray
from infra.settings import ConfigError, FlywheelConfig, load_config


@pytest.mark.parametrize("address, shown", [
    ("ray://user:secret@head:10001", "ray://head:10001"), ("user:secret@head:6379", "head:6379"),
    ("head:6379", "head:6379"), (None, "local"), ("auto", "auto"),
])
def test_the_recorded_address_carries_no_credentials(address, shown):
    assert public_address(address) == shown


def test_secrets_are_not_forwarded_to_ray_workers():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["ray.forward_env=[HF_HOME, AWS_SECRET_ACCESS_KEY]"])
    assert "AWS_SECRET_ACCESS_KEY" in str(err.value) and "dashboard" in str(err.value)


def test_ray_training_takes_its_workers_from_train_ray():
    with pytest.raises(ConfigError, match=r"train.batch_size \(6\) must be a multiple of train.ray.num_workers \(4\)"):
        load_config(None, ["train.engine=ray", "train.batch_size=6", "train.ray.num_workers=4"])
    with pytest.raises(ConfigError, match=r"leave train.num_processes at 1"):
        load_config(None, ["train.engine=ray", "train.num_processes=2"])
    config = load_config(None, ["train.engine=ray", "train.batch_size=8", "train.ray.num_workers=4"])
    assert config.train.world_size() == 4 and uses_ray(config)


def test_which_rounds_use_ray(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert not uses_ray(FlywheelConfig.model_validate({"ray": {"address": "head:6379"}}))  # an address alone uses nothing
    assert uses_ray(FlywheelConfig.model_validate({"generate": {"backend": "ray"}}))
    monkeypatch.setenv("RAY_ADDRESS", "elsewhere:6379")
    assert FlywheelConfig().ray.resolved_address() == "elsewhere:6379"


def test_ray_train_checkpoints_go_to_the_artifact_store(tmp_path):
    path, filesystem = ray_storage(str(tmp_path / "loop" / "round-001" / "train-ray"))
    assert path == str(tmp_path / "loop" / "round-001" / "train-ray") and filesystem is None
    path, filesystem = ray_storage("s3://bucket/prefix/loop/round-001/train-ray", "http://127.0.0.1:9000")
    assert path == "bucket/prefix/loop/round-001/train-ray" and type(filesystem).__name__ == "S3FileSystem"
