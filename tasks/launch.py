"""Training across several processes (one per GPU, or CPU processes over gloo) with
``accelerate launch``: DDP by default, or whatever ``train.accelerate_config`` says (DeepSpeed
ZeRO-3 with configs/accelerate-zero3.yaml).

``launch_training`` takes what ``train_policy`` takes, the ``TrainJob``. It writes a job folder, launches
``python -m tasks.launch <job.json>`` in ``train.num_processes`` processes and waits. Every
process runs ``train_policy``; the main one (rank 0) alone writes the checkpoints into the
stage's folder, the result and each logged step, which the launching process forwards to
``on_log`` as they come: the metrics are logged once, by the process that owns the tracker.

The job folder:
* ``job.json``: the ``TrainJob``;
* ``accelerate.yaml``: the launch's accelerate config;
* ``steps.jsonl``: each logged step, ``{"step": n, "logs": {...}}``, appended by rank 0;
* ``result.json``: the ``TrainResult``, written by rank 0 last;
* ``diverged.json``: ``{"step", "names"}`` when the loss turned NaN or infinite;
* ``shared/``: what the processes share: the datasets (and TRL's caches beside them), the epoch
  checkpoints of ``keep_best_epoch``;
* ``launch.log``: the processes' output (copied to this process's stdout too), whose first
  traceback a failure shows;
* ``machines.txt``: over several machines, the command each other machine runs.

Over several machines (an accelerate config with ``num_machines`` > 1) the job folder is made in
``train.launch_dir``, which every machine mounts at the same path; this machine runs machine 0,
and each other machine runs ``machine_command`` with its own rank. Only rank 0 writes the
checkpoints, so the stage's folder may stay local to this machine.
"""

from __future__ import annotations

import codecs
import contextlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import IO, Callable

import yaml

from infra.settings import TrainConfig
from tasks.train import TrainJob, TrainResult, train_policy
from tasks.training.callbacks import NonFiniteLoss

JOB, LAUNCH_CONFIG, STEPS, RESULT, DIVERGED, SHARED, LOG, MACHINES = (
    "job.json", "accelerate.yaml", "steps.jsonl", "result.json", "diverged.json", "shared", "launch.log", "machines.txt")
DIVERGED_EXIT = 3  # a process's exit status when the loss diverged
FAILED_PREFIX = "failed-rank"  # a failing process's own traceback: failed-rank<N>.txt
TAIL_LINES = 40  # lines of the processes' output a failure shows


def launched(config: TrainConfig) -> bool:
    """Whether training goes through ``accelerate launch`` (more than one process, or a config file)."""
    return config.num_processes > 1 or config.accelerate_config is not None


def accelerate_config(config: TrainConfig, cpu: bool) -> dict:
    """The launch's accelerate config: ``train.accelerate_config`` read (its relative paths taken
    from its own folder), or plain DDP. torchrun's launcher (accelerate's MULTI_GPU) starts the
    processes on CPUs too; the Trainer's ``use_cpu`` then makes them gloo ranks."""
    if config.accelerate_config is None:
        return {"compute_environment": "LOCAL_MACHINE", "distributed_type": "MULTI_GPU", "num_machines": 1,
                "machine_rank": 0, "gpu_ids": "all", "mixed_precision": "no", "dynamo_config": {}, "use_cpu": cpu}
    path = Path(config.accelerate_config)
    try:
        loaded = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"train.accelerate_config: {path} does not exist (relative paths are read from {Path.cwd()})") from None
    if not isinstance(loaded, dict) or "distributed_type" not in loaded:
        raise ValueError(f"train.accelerate_config: {path} is not an accelerate config (no distributed_type)")
    if machines(loaded) > 1:
        _check_several_machines(config, path, loaded)
    if loaded["distributed_type"] == "DEEPSPEED":
        if importlib.util.find_spec("deepspeed") is None:
            raise RuntimeError(f"train.accelerate_config: {path} trains with DeepSpeed, which is not installed here: "
                               "`pip install deepspeed` on the training machine (it builds CUDA kernels), or train "
                               "with plain DDP (train.accelerate_config: null)")
        if cpu:
            raise RuntimeError(f"train.accelerate_config: {path} trains with DeepSpeed, which needs GPUs; none was found")
        with_absolute_paths(loaded, path)
    return loaded


def with_absolute_paths(loaded: dict, path: Path) -> dict:
    """The config's DeepSpeed settings file read from the config's own folder, as an absolute path
    (the launched processes, and the other machines, run elsewhere)."""
    ds = loaded.get("deepspeed_config", {})
    if ds.get("deepspeed_config_file") and not Path(ds["deepspeed_config_file"]).is_absolute():
        ds["deepspeed_config_file"] = str((path.parent / ds["deepspeed_config_file"]).resolve())
    return loaded


def machines(launch: dict) -> int:
    return int(launch.get("num_machines", 1))


def _check_several_machines(config: TrainConfig, path: Path, loaded: dict) -> None:
    """An accelerate config over several machines: the others must find the job and the first machine."""
    n = machines(loaded)
    if config.launch_dir is None:
        raise ValueError(f"train.accelerate_config: {path} asks for {n} machines: set train.launch_dir to a folder "
                         "every machine mounts at the same path, where the job goes (docs/scaling.md)")
    missing = [key for key in ("main_process_ip", "main_process_port") if not loaded.get(key)]
    if missing:
        raise ValueError(f"train.accelerate_config: {path} asks for {n} machines but sets no {' or '.join(missing)}: "
                         "the other machines meet the first there")
    if config.num_processes % n:
        raise ValueError(f"train.num_processes ({config.num_processes}) must be a multiple of num_machines ({n}) in "
                         f"train.accelerate_config {path}: each machine runs the same number of processes")
    loaded["machine_rank"] = 0  # this machine; each other one passes its own --machine_rank


def launch_command(job_dir: Path, num_processes: int, several_machines: bool = False) -> list[str]:
    # One machine: a free port, so trainings side by side do not meet. Several: the config's port, which the others know.
    port = [] if several_machines else ["--main_process_port", "0"]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(job_dir / LAUNCH_CONFIG),
            "--num_processes", str(num_processes), *port, "-m", "tasks.launch", str(job_dir / JOB)]


def machine_command(job_dir: Path, machine_rank: int | str, num_processes: int) -> str:
    """What another machine runs, from its checkout of the repository, to take part in the launch."""
    return (f"accelerate launch --config_file {job_dir / LAUNCH_CONFIG} --num_processes {num_processes} "
            f"--machine_rank {machine_rank} -m tasks.launch {job_dir / JOB}")


def launch_training(job: TrainJob, on_log: Callable[[dict, int], None] | None = None) -> TrainResult:
    """``train_policy(job)`` across ``job.config.num_processes`` processes; the same result, checkpoints
    and logged steps (forwarded to ``on_log`` as they come). A diverged loss raises NonFiniteLoss
    as in one process; any other failure raises RuntimeError with the first failing process's traceback."""
    from infra.models import pick_device
    from tasks.training.trl_internals import check_trl_internals

    check_trl_internals()  # here too: a moved TRL name is named once, before any process starts
    config = job.config
    cpu = pick_device(job.model).type == "cpu"
    launch = accelerate_config(config, cpu)
    _check_gpus(config, cpu, machines(launch))
    several = machines(launch) > 1
    if several:
        Path(config.launch_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="flywheel-train-", dir=config.launch_dir if several else None) as folder:
        job_dir = Path(folder).resolve()
        (job_dir / JOB).write_text(job.model_copy(update={"output_dir": Path(job.output_dir).resolve()}).model_dump_json())
        (job_dir / LAUNCH_CONFIG).write_text(yaml.safe_dump(launch))
        if several:
            _announce(job_dir, machines(launch), config.num_processes)
        status = _run(launch_command(job_dir, config.num_processes, several), job_dir, on_log)
        return _outcome(job_dir, status, config.num_processes)


def _announce(job_dir: Path, n_machines: int, num_processes: int) -> None:
    """Say (and write beside the job) what the other machines run; this one waits for them to meet it."""
    command = machine_command(job_dir, "N", num_processes)
    (job_dir / MACHINES).write_text(command + "\n")
    print(f"training on {n_machines} machines; this one is machine 0 and waits for the others. On each machine N "
          f"of 1..{n_machines - 1}, from the repository:\n  {command}", flush=True)


def _check_gpus(config: TrainConfig, cpu: bool, n_machines: int = 1) -> None:
    import torch

    here = config.num_processes // n_machines
    if not cpu and here > torch.cuda.device_count():
        raise RuntimeError(f"train.num_processes is {config.num_processes} ({here} on each of {n_machines} machines) but "
                           f"this machine has {torch.cuda.device_count()} GPUs: one process a GPU")


def _outcome(job_dir: Path, status: int, num_processes: int) -> TrainResult:
    """The launch's result, or the error it ended with: NonFiniteLoss, or RuntimeError with the first failing process's traceback."""
    if (job_dir / DIVERGED).exists():
        diverged = json.loads((job_dir / DIVERGED).read_text())
        raise NonFiniteLoss(diverged["step"], diverged["names"])
    if status != 0 or not (job_dir / RESULT).exists():
        own = sorted(job_dir.glob(f"{FAILED_PREFIX}*.txt"), key=lambda p: p.stat().st_mtime)
        detail = (own[0].read_text(errors="replace").rstrip() if own
                  else failure_excerpt((job_dir / LOG).read_text(errors="replace")))
        raise RuntimeError(f"training in {num_processes} processes (accelerate launch) failed with exit status "
                           f"{status}" + ("" if status else ", without a result") + ":\n" + detail)
    return TrainResult.model_validate_json((job_dir / RESULT).read_text())


def failure_excerpt(output: str) -> str:
    """The first failing process's traceback (its chained exceptions too; torchrun prefixes a rank's
    lines with ``[rankN]:`` once the processes have met), or the output's last lines when there is none."""
    lines = output.replace("\r", "\n").splitlines()
    for i, line in enumerate(lines):
        found = re.search(r"(\[rank\d+\]: )?Traceback \(most recent call last\)", line)
        if not found:
            continue
        prefix = found.group(1) or ""
        block = [line[found.start() + len(prefix):]]
        for rest in lines[i + 1:]:
            if prefix and prefix not in rest:
                continue  # another process's line
            block.append(rest[rest.find(prefix) + len(prefix):] if prefix else rest)
        return "\n".join(_one_exception(block)[-TAIL_LINES:])
    return "\n".join(lines[-TAIL_LINES:])


CHAINED = ("During handling of the above exception", "The above exception was the direct cause")


def _one_exception(lines: list[str]) -> list[str]:
    """A traceback's lines up to the end of its exception's message, exceptions chained to it included."""
    in_message = False
    for i, line in enumerate(lines):
        if i and line and not line[0].isspace() and not line.startswith(("Traceback", *CHAINED)):
            in_message = True  # the exception's line (and its message's further lines)
        elif in_message and (not line.strip() or line.startswith("Traceback")):
            following = next((rest for rest in lines[i:] if rest.strip()), "")
            if not following.startswith(CHAINED):
                return lines[:i]
            in_message = False
    return lines


def _run(command: list[str], job_dir: Path, on_log: Callable[[dict, int], None] | None) -> int:
    """Run the launch, forwarding the steps rank 0 appends and the processes' output (to
    ``launch.log`` and this process's stdout); the processes are stopped if this one is interrupted."""
    root = str(Path(__file__).resolve().parents[1])  # where `tasks` is imported from, for the launched processes
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    read = 0
    with (job_dir / LOG).open("wb") as log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        copier = threading.Thread(target=_copy_output, args=(process.stdout, log), daemon=True)
        copier.start()
        try:
            while True:
                try:
                    status = process.wait(timeout=1)
                except subprocess.TimeoutExpired:
                    status = None
                read = _forward(job_dir / STEPS, read, on_log)  # after the wait: the last steps come too
                if status is not None:
                    return status
        except BaseException:  # interrupted, or Prefect cancelling the run: the processes go too
            _stop(process)
            raise
        finally:
            copier.join(timeout=30)


def _copy_output(source: IO[bytes], log: IO[bytes]) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for chunk in iter(lambda: source.read1(1 << 16), b""):
        log.write(chunk)
        log.flush()
        sys.stdout.write(decoder.decode(chunk))
        sys.stdout.flush()


def _stop(process: subprocess.Popen) -> None:
    for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _forward(steps: Path, read: int, on_log: Callable[[dict, int], None] | None) -> int:
    """Hand the complete lines of ``steps`` past byte ``read`` to ``on_log``; the new offset."""
    if not steps.exists():
        return read
    with steps.open("rb") as f:
        f.seek(read)
        data = f.read()
    complete = data[: data.rfind(b"\n") + 1]
    for line in complete.splitlines():
        step = json.loads(line)
        if on_log:
            on_log(step["logs"], step["step"])
    return read + len(complete)


def _write_whole(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(text)
    partial.replace(path)


def run_job(job_file: Path) -> int:
    """One launched process: train; rank 0 writes the steps and the result."""
    job_dir = job_file.parent
    job = TrainJob.model_validate_json(job_file.read_text())
    main_process = int(os.environ.get("RANK", "0")) == 0

    def append_step(logs: dict, step: int) -> None:
        with (job_dir / STEPS).open("a") as f:
            f.write(json.dumps({"step": step, "logs": logs}) + "\n")

    try:
        result = train_policy(job, append_step if main_process else None, shared_dir=job_dir / SHARED)
    except NonFiniteLoss as err:
        # Every process sees the same gathered figures; whichever stops first says so (the launcher
        # ends the others as soon as one exits).
        _write_whole(job_dir / DIVERGED, json.dumps({"step": err.step, "names": err.names}))
        print(err, file=sys.stderr)
        return DIVERGED_EXIT
    except Exception:
        # The processes' outputs interleave (before they meet, torchrun does not prefix them):
        # each keeps its own traceback whole, for the launching process to show.
        import traceback

        _write_whole(job_dir / f"{FAILED_PREFIX}{os.environ.get('RANK', '0')}.txt", traceback.format_exc())
        raise
    if main_process:
        _write_whole(job_dir / RESULT, result.model_dump_json())
    return 0


if __name__ == "__main__":
    sys.exit(run_job(Path(sys.argv[1])))
