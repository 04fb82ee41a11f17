"""A Ray cluster of `ray start` processes on this machine, for tests/test_ray.py: a head and worker
nodes of one CPU each with a small object store, each node a process group of its own so that a
test can SIGKILL one (its raylet and workers with it) and start another in its place."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")
OBJECT_STORE_BYTES = 80 * 1024 * 1024  # Ray's floor is 75 MiB; the tests move a tiny model's weights at most
START_TIMEOUT_S = 180  # a loaded 2-core machine starts a node in 5-30 s


class RayNode:
    """One `ray start --block` process and everything it started."""

    def __init__(self, args: list[str], log: Path):
        # A dead node is noticed in ~3 s rather than Ray's default ~30 s (the GCS's health checks of each raylet).
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_health_check_initial_delay_ms": "1000",
               "RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3"}
        self.log = log.open("ab")
        self.process = subprocess.Popen([RAY, "start", "--block", "--num-cpus=1", f"--object-store-memory={OBJECT_STORE_BYTES}",
                                         "--disable-usage-stats", *args], stdout=self.log, stderr=subprocess.STDOUT,
                                        env=env, start_new_session=True)

    def pids(self) -> list[int]:
        import psutil

        with contextlib.suppress(psutil.NoSuchProcess):
            return [self.process.pid, *(c.pid for c in psutil.Process(self.process.pid).children(recursive=True))]
        return []

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """The node's processes, all at once (SIGKILL: the node dies as a machine would)."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=30)

    def stop(self) -> None:
        pids = self.pids()
        self.kill(signal.SIGTERM)
        time.sleep(1)
        for pid in pids:  # anything that outlived the SIGTERM
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.log.close()


class LocalRayCluster:
    """A head and one worker node; ``address`` is the head's GCS address."""

    def __init__(self, port: int):
        self.folder = Path(tempfile.mkdtemp(prefix="fwray", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
        self.address = f"127.0.0.1:{port}"
        self.head = RayNode(["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={self.folder}"],
                            self.folder / "head.log")
        self.workers: list[RayNode] = []
        self.wait_for_nodes(1)
        self.start_worker()

    def start_worker(self) -> RayNode:
        alive = self.alive_nodes()
        node = RayNode([f"--address={self.address}"], self.folder / f"worker{len(self.workers)}.log")
        self.workers.append(node)
        self.wait_for_nodes(alive + 1)
        return node

    def kill_worker(self) -> None:
        """SIGKILL the newest worker node and wait until the head has noticed it is gone."""
        alive = self.alive_nodes()
        self.workers[-1].kill()
        deadline = time.monotonic() + START_TIMEOUT_S
        while self.alive_nodes() >= alive and time.monotonic() < deadline:
            time.sleep(0.5)

    def alive_nodes(self) -> int:
        """Live nodes, as `ray status` lists them (it reads the head's GCS; no dashboard needed)."""
        out = subprocess.run([RAY, "status", f"--address={self.address}"], capture_output=True, text=True,
                             env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
        if out.returncode != 0 or "Active:" not in out.stdout:
            return 0
        active = out.stdout.split("Active:", 1)[1].split("Pending:", 1)[0]
        return sum(1 for line in active.splitlines() if "node_" in line)

    def wait_for_nodes(self, n: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while self.alive_nodes() < n:
            if time.monotonic() > deadline:
                logs = "\n".join(p.read_text(errors="replace")[-2000:] for p in self.folder.glob("*.log"))
                raise RuntimeError(f"the Ray cluster at {self.address} has fewer than {n} nodes after {START_TIMEOUT_S} s:\n{logs}")
            time.sleep(1)

    def stop(self) -> None:
        for node in [*self.workers, self.head]:
            node.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
