"""Training over several machines without Ray: configs/accelerate-multinode.yaml (DeepSpeed ZeRO-3,
DeepSpeed's standard launcher) read by accelerate's own launcher code as each machine's command
would, the checks a several-machine config must pass, and a real launch of 2 "machines" on this
one (machine 0 started by the train stage, machine 1 by the command it prints, 1 CPU process each,
DDP over gloo), against the same stage in one process. DeepSpeed is not installed here: the
ZeRO-3 file is only planned, never launched."""

from __future__ import annotations

import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from flows.stages import train_policy_task
from infra.settings import TrainConfig
from infra.stack import free_port
from tasks.launch import MACHINES, accelerate_config, with_absolute_paths
from tests.test_multiprocess_train import TOLERANCE, _losses, _stage

REPO = Path(__file__).resolve().parents[1]


def test_the_multinode_config_starts_torchrun_on_each_machine(tmp_path):
    """The ZeRO-3 file as the train stage writes it into the job (its DeepSpeed settings file made
    absolute), planned by accelerate's own parser and DeepSpeed launch preparation (no DeepSpeed
    needed) for the command a second machine runs: DeepSpeed's standard launcher, so torchrun there
    as node 1 of 2, meeting at machine 0's address; not pdsh."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    config = REPO / "configs" / "accelerate-multinode.yaml"
    job_config = tmp_path / "accelerate.yaml"
    job_config.write_text(yaml.safe_dump(with_absolute_paths(yaml.safe_load(config.read_text()), config)))
    args = launch_command_parser().parse_args(
        ["--config_file", str(job_config), "--num_processes", "16", "--machine_rank", "1", "-m", "tasks.launch", "/shared/job/job.json"])
    args, defaults, _ = _validate_launch_command(args)
    assert args.use_deepspeed and args.deepspeed_multinode_launcher == "standard"
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)  # as `accelerate launch` sets it
    command, env = prepare_deepspeed_cmd_env(args)
    assert command is None  # no deepspeed/pdsh runner command: accelerate hands the args to torchrun
    assert (args.nnodes, args.node_rank, args.nproc_per_node) == ("2", 1, "8")
    assert args.rdzv_endpoint == f"{defaults.main_process_ip}:{defaults.main_process_port}" and args.rdzv_backend == "static"
    assert env["ACCELERATE_DEEPSPEED_CONFIG_FILE"] == str(REPO / "configs" / "deepspeed-zero3.json")


def two_machine_config(folder: Path, **changes) -> Path:
    """Plain DDP (torchrun) over 2 machines meeting on this one: the several-machine path without DeepSpeed."""
    config = {"compute_environment": "LOCAL_MACHINE", "distributed_type": "MULTI_GPU", "num_machines": 2, "machine_rank": 0,
              "main_process_ip": "127.0.0.1", "main_process_port": free_port(), "num_processes": 2, "gpu_ids": "all",
              "mixed_precision": "no", "rdzv_backend": "static", "dynamo_config": {}, "use_cpu": True, **changes}
    path = folder / "two-machines.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("train, changes, refused", [
    ({}, {}, "asks for 2 machines: set train.launch_dir"),
    ({"launch_dir": "shared"}, {"main_process_ip": None}, "sets no main_process_ip: the other machines meet the first there"),
    ({"launch_dir": "shared", "num_processes": 3, "batch_size": 3}, {}, r"train.num_processes \(3\) must be a multiple of num_machines \(2\)"),
])
def test_a_several_machine_config_needs_a_shared_folder_and_a_meeting_point(tmp_path, train, changes, refused):
    config = TrainConfig(**{"num_processes": 2, "batch_size": 4, **train}, accelerate_config=two_machine_config(tmp_path, **changes))
    with pytest.raises(ValueError, match=refused):
        accelerate_config(config, cpu=True)


def test_this_machine_is_machine_zero(tmp_path):
    config = TrainConfig(num_processes=2, batch_size=4, launch_dir=tmp_path, accelerate_config=two_machine_config(tmp_path, machine_rank=1))
    assert accelerate_config(config, cpu=True)["machine_rank"] == 0


def _machine_one(launch_dir: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """What an operator does on the second machine: wait for the job, run the command the stage printed."""
    deadline = time.monotonic() + timeout
    while not (found := list(launch_dir.glob(f"*/{MACHINES}"))):
        assert time.monotonic() < deadline, "the train stage wrote no machines.txt"
        time.sleep(0.2)
    words = shlex.split(found[0].read_text().replace("--machine_rank N", "--machine_rank 1"))
    assert words[:2] == ["accelerate", "launch"]
    command = [sys.executable, "-m", "accelerate.commands.launch", *words[2:]]
    return subprocess.run(command, cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_two_machines_follow_the_loss_curve_of_one(tiny_model, tmp_path):
    launch_dir = tmp_path / "shared"
    one_ctx, one_pairs = _stage(tmp_path / "one", tiny_model, "one")
    two_ctx, two_pairs = _stage(tmp_path / "two", tiny_model, "two", num_processes=2, launch_dir=str(launch_dir),
                                accelerate_config=str(two_machine_config(tmp_path)))
    second: dict = {}
    helper = threading.Thread(target=lambda: second.update(done=_machine_one(launch_dir)), daemon=True)
    helper.start()
    two = train_policy_task.fn(two_ctx, two_pairs)
    helper.join(timeout=120)
    assert second["done"].returncode == 0, second["done"].stdout[-3000:] + second["done"].stderr[-3000:]
    one = train_policy_task.fn(one_ctx, one_pairs)
    for name in ("loss", "eval_loss"):
        curve_one, curve_two = _losses(one.result.log_history, name), _losses(two.result.log_history, name)
        assert [s for s, _ in curve_one] == [s for s, _ in curve_two], name
        assert [v for _, v in curve_two] == pytest.approx([v for _, v in curve_one], abs=TOLERANCE), name
    assert not list(launch_dir.iterdir())  # the job folder goes when the stage ends
