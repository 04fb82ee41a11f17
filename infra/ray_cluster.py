"""Joining the Ray cluster the heavy stages run on (``ray.address`` or ``RAY_ADDRESS``), and what a
round records of it: the cluster's address without credentials and the Ray job's id.

``join_cluster`` connects this process once (``ray.init``) and is a no-op after; with no address it
starts a Ray instance inside this process, so ``train.engine: ray`` also runs on one machine. The
runtime environment every worker gets: the repository root on ``PYTHONPATH`` (a node of this
machine imports this very code; a remote node imports its own Flywheel install, which must be the
same version) and the driver's values of ``ray.forward_env``, never secrets.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NamedTuple

from infra.settings import FlywheelConfig, RayConfig

REPO_ROOT = str(Path(__file__).resolve().parents[1])


class RayCluster(NamedTuple):
    address: str  # as the round records it: no user or password
    job_id: str  # this driver's Ray job


def public_address(address: str | None) -> str:
    """``address`` without credentials (``ray://user:secret@host:10001`` -> ``ray://host:10001``); 'local' when none."""
    if not address:
        return "local"
    return re.sub(r"(^[a-z]+://)?[^/@]*@", lambda m: m.group(1) or "", address, count=1)


def runtime_env(config: RayConfig) -> dict:
    forwarded = {name: os.environ[name] for name in config.forward_env if name in os.environ}
    python_path = os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH")) if p)
    return {"env_vars": {**forwarded, "PYTHONPATH": python_path, "RAY_USAGE_STATS_ENABLED": "0"}}


def uses_ray(config: FlywheelConfig) -> bool:
    """Whether a stage of the round runs on Ray (train.engine or generate.backend 'ray')."""
    return config.train.engine == "ray" or config.generate.backend == "ray"


def join_if_used(config: FlywheelConfig) -> RayCluster | None:
    """Join ``config.ray``'s cluster when a stage runs on Ray (before a backend or training would
    start a local instance instead); None otherwise."""
    return join_cluster(config.ray) if uses_ray(config) else None


def join_cluster(config: RayConfig) -> RayCluster:
    """This process connected to the configured cluster (once); what the round records of it.
    A cluster that cannot be reached raises ConnectionError naming the address and what to check."""
    import ray

    address = config.resolved_address()
    if not ray.is_initialized():
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        try:
            ray.init(address=address, namespace=config.namespace, runtime_env=runtime_env(config),
                     log_to_driver=False, include_dashboard=False if address is None else None)
        except (ConnectionError, TimeoutError, RuntimeError) as err:
            raise ConnectionError(f"ray.address: cannot join the Ray cluster at {public_address(address)}: {err}. "
                                  "Is `ray start --head` running there, and is its port reachable from here?") from err
    return RayCluster(public_address(address), ray.get_runtime_context().get_job_id())


def ray_storage(location: str, endpoint_url: str | None = None):
    """Where Ray Train keeps a training's checkpoints, in the artifact store (``location``: a store's ``uri`` of a
    key): ``(path, pyarrow filesystem or None)`` for RunConfig's storage_path and storage_filesystem. Every node
    reads and writes it, so a worker's checkpoint reaches the driver whichever node it ran on; S3 credentials come
    from each node's own environment."""
    if not location.startswith("s3://"):
        return str(Path(location).resolve()), None
    from urllib.parse import urlparse

    from pyarrow import fs

    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
    options = {}
    if endpoint:
        parsed = urlparse(endpoint)
        options = {"endpoint_override": parsed.netloc or parsed.path, "scheme": parsed.scheme or "https"}
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return location[len("s3://"):].strip("/"), fs.S3FileSystem(region=region, **options)
