"""configs/accelerate-multinode.yaml, DeepSpeed ZeRO-3 over several machines without Ray, read by
accelerate's own launcher code as each machine's command would (nothing is started)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_multinode_config_starts_torchrun_on_each_machine():
    """accelerate's own parser and DeepSpeed launch preparation (no DeepSpeed needed) on the command a
    second machine runs: DeepSpeed's standard launcher, so torchrun there as node 1 of 2, meeting at the
    main machine's address; not pdsh."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    config = REPO / "configs" / "accelerate-multinode.yaml"
    args = launch_command_parser().parse_args(
        ["--config_file", str(config), "--machine_rank", "1", "-m", "tasks.launch", "/shared/job/job.json"])
    args, defaults, _ = _validate_launch_command(args)
    assert args.use_deepspeed and args.deepspeed_multinode_launcher == "standard"
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)  # as `accelerate launch` sets it
    command, env = prepare_deepspeed_cmd_env(args)
    assert command is None  # no deepspeed/pdsh runner command: accelerate hands the args to torchrun
    assert (args.nnodes, args.node_rank, args.nproc_per_node) == ("2", 1, "8")
    assert args.rdzv_endpoint == f"{defaults.main_process_ip}:{defaults.main_process_port}" and args.rdzv_backend == "static"
    settings = REPO / env["ACCELERATE_DEEPSPEED_CONFIG_FILE"]  # read from the repository root, where the command runs
    assert settings == REPO / "configs" / "deepspeed-zero3.json" and settings.is_file()
