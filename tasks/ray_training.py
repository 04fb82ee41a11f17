"""Training as a Ray Train ``TorchTrainer`` (``train.engine: ray``): ``train_policy`` run by
``train.ray.num_workers`` workers of the Ray cluster (DDP over gloo on CPUs, NCCL on GPUs; DeepSpeed
through ``train.ray.deepspeed_config``), with what ``launch_training`` gives in one machine's
processes: the same ``TrainResult`` and checkpoints, rank 0's steps handed to ``on_log`` as they come.

How the pieces travel (the workers may be on other machines):
* rank 0's logged steps and its reference pass's log-probabilities go to a ``StepRelay`` actor that
  this process reads every second: the metrics are logged once, by the process that owns the
  tracker, and the log-probs reach the artifact store before the first step;
* the trained policy (``adapter/``, ``merged/``) and the result leave rank 0 as a Ray Train
  checkpoint under ``storage`` (the artifact store: every node reaches it) and are copied into
  ``job.output_dir`` here;
* a worker (or its node) that dies makes Ray Train restart the workers, up to
  ``train.ray.max_failures`` times; a restart reads the reference log-probs the relay kept, so the
  reference pass is not made again. Past the count this raises ``RayTrainingFailed`` with Ray's reason.
A diverged loss (``NonFiniteLoss``) is not retried: every rank sees it, says so to the relay and
stops; it is raised here as in one process.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Callable

from tasks.train import TrainJob, TrainResult, train_policy
from tasks.training.callbacks import NonFiniteLoss
from tasks.training.reference import ReferenceLogps

RESULT = "result.json"
POLL_S = 1.0


class RayTrainingFailed(RuntimeError):
    """The Ray training failed past its retries (or could not start)."""


class StepRelay:
    """What rank 0 sends the driver while training (a Ray actor, wrapped when training starts)."""

    def __init__(self, reference_logps: ReferenceLogps | None):
        self.steps: list[tuple[dict, int]] = []
        self.reference = reference_logps
        self.fresh_reference = False  # computed during this training: the driver stores it
        self.diverged: dict | None = None
        self.attempts = 0

    def put_step(self, logs: dict, step: int) -> None:
        self.steps.append((logs, step))

    def put_reference(self, logps: ReferenceLogps) -> None:
        self.reference, self.fresh_reference = logps, True

    def put_diverged(self, step: int, names: list[str]) -> None:
        self.diverged = {"step": step, "names": names}

    def start_attempt(self, rank: int) -> ReferenceLogps | None:
        self.attempts += rank == 0
        return self.reference

    def drain(self) -> dict:
        taken, self.steps = self.steps, []
        fresh, self.fresh_reference = self.fresh_reference, False
        return {"steps": taken, "reference": self.reference if fresh else None, "diverged": self.diverged,
                "attempts": self.attempts}


def _node_folder(token: str) -> Path:
    """A folder the workers of one node share for one attempt (the datasets, keep_best_epoch's checkpoints)."""
    folder = Path(tempfile.gettempdir()) / f"flywheel-ray-{token}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _attempt_token(rank: int) -> str:
    """One name for this attempt, the same on every rank (rank 0's, broadcast)."""
    import uuid

    import torch.distributed as dist

    token = [uuid.uuid4().hex[:12] if rank == 0 else ""]
    dist.broadcast_object_list(token, src=0)
    return token[0]


def worker_loop(settings: dict) -> None:
    """One Ray Train worker: ``train_policy`` on the job; rank 0 reports the policy as the checkpoint."""
    import ray
    import ray.train

    context = ray.train.get_context()
    rank, relay = context.get_world_rank(), settings["relay"]
    job = TrainJob.model_validate_json(settings["job"])
    reference = ray.get(relay.start_attempt.remote(rank))
    token = _attempt_token(rank)
    shared, out = _node_folder(token), Path(tempfile.mkdtemp(prefix="flywheel-ray-policy-"))
    job = job.model_copy(update={"output_dir": out, "reference_logps": job.reference_logps or reference})
    on_log = (lambda logs, step: relay.put_step.remote(logs, step)) if rank == 0 else None
    on_reference = (lambda logps: ray.get(relay.put_reference.remote(logps))) if rank == 0 else None
    try:
        result = train_policy(job, on_log, on_reference_logps=on_reference, shared_dir=shared)
    except NonFiniteLoss as err:
        ray.get(relay.put_diverged.remote(err.step, err.names))
        ray.train.report({"diverged": 1})
        return
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    checkpoint = None
    if rank == 0:
        (out / RESULT).write_text(result.model_dump_json())
        checkpoint = ray.train.Checkpoint.from_directory(str(out))
    ray.train.report({"final_loss": result.final_loss}, checkpoint=checkpoint)
    shutil.rmtree(out, ignore_errors=True)


def _scaling(job: TrainJob):
    from ray.train import ScalingConfig

    settings = job.config.ray
    return ScalingConfig(num_workers=settings.num_workers, use_gpu=settings.use_gpu,
                         resources_per_worker=dict(settings.resources_per_worker))


def _torch_config(job: TrainJob):
    from ray.train.torch import TorchConfig

    return TorchConfig(backend="nccl" if job.config.ray.use_gpu else "gloo")


def train_on_ray(job: TrainJob, storage: tuple[str, object], run_name: str,
                 on_log: Callable[[dict, int], None] | None = None,
                 on_reference_logps: Callable[[ReferenceLogps], None] | None = None) -> TrainResult:
    """``train_policy(job)`` on the Ray cluster this process has joined; see the module's docstring."""
    import ray
    import ray.util.scheduling_strategies
    from ray.train import FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    from tasks.training.trl_internals import check_trl_internals

    check_trl_internals()  # a moved TRL name is named here, before any worker starts
    settings = job.config.ray
    os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = str(settings.start_timeout_s)
    # On this process's node, as Ray Train's controller is: a worker node that dies does not take it along.
    here = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    relay = ray.remote(num_cpus=0, scheduling_strategy=here)(StepRelay).remote(job.reference_logps)
    path, filesystem = storage
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={"job": job.model_dump_json(), "relay": relay},
        scaling_config=_scaling(job),
        torch_config=_torch_config(job),
        run_config=RunConfig(name=run_name, storage_path=path, storage_filesystem=filesystem,
                             failure_config=FailureConfig(max_failures=settings.max_failures)),
    )
    try:
        outcome = _fit_forwarding(trainer, relay, on_log, on_reference_logps)
        return _collect(outcome, job, settings.max_failures)
    finally:
        ray.kill(relay)


def _fit_forwarding(trainer, relay, on_log, on_reference_logps) -> dict:
    """``trainer.fit()`` in a thread while this one hands the relay's steps and log-probs on; what it ended with."""
    import ray

    ended: dict = {}

    def fit() -> None:
        try:
            ended["result"] = trainer.fit()
        except Exception as err:  # Ray raises what ended the run: it is reported with the relay's state
            ended["error"] = err

    thread = threading.Thread(target=fit, daemon=True)
    thread.start()
    logged: set[tuple[int, frozenset]] = set()
    while True:
        thread.join(timeout=POLL_S)
        news = ray.get(relay.drain.remote())
        for logs, step in news["steps"]:
            # A restarted attempt trains the same steps again: each is logged once.
            if on_log and (seen := (step, frozenset(logs))) not in logged:
                logged.add(seen)
                on_log(logs, step)
        if news["reference"] is not None and on_reference_logps:
            on_reference_logps(news["reference"])
        if not thread.is_alive():
            return {**ended, "diverged": news["diverged"], "attempts": news["attempts"]}


def _collect(outcome: dict, job: TrainJob, max_failures: int) -> TrainResult:
    """The trained policy copied into ``job.output_dir`` and the result; or the error training ended with."""
    if outcome["diverged"]:
        raise NonFiniteLoss(outcome["diverged"]["step"], outcome["diverged"]["names"])
    result = outcome.get("result")
    error = outcome.get("error") or (result.error if result is not None else None)
    if error is not None or result is None or result.checkpoint is None:
        reason = _first_line(error) if error is not None else "no worker reported the trained policy"
        raise RayTrainingFailed(f"training on Ray ({job.config.ray.num_workers} workers) failed after "
                                f"{outcome['attempts']} attempt(s) (train.ray.max_failures {max_failures}): {reason}. "
                                "The round's earlier stages are kept: a rerun resumes at the train stage.") from error
    Path(job.output_dir).mkdir(parents=True, exist_ok=True)
    with result.checkpoint.as_directory() as folder:
        trained = TrainResult.model_validate_json((Path(folder) / RESULT).read_text())
        trained.attempts = outcome["attempts"]
        for entry in Path(folder).iterdir():
            if entry.is_dir():
                shutil.copytree(entry, Path(job.output_dir) / entry.name, dirs_exist_ok=True)
    return trained


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or error.__class__.__name__
    lines = [line for line in text.splitlines() if line.strip()]
    detail = next((line for line in reversed(lines) if "Error" in line or "error" in line), lines[0] if lines else text)
    return f"{error.__class__.__name__}: {detail.strip()[:500]}"
