"""The real stack on loopback, without Docker: an S3 server (SeaweedFS), an MLflow server whose
artifacts live in that S3, a Prefect server, and process workers on the ``flywheel`` and
``gpu`` work pools.

Everything they keep lies on disk under the stack folder, so a round's work survives
``down``/``up``, a kill -9 of any of them and a reboot: the S3 objects (``s3/``, SeaweedFS's
volumes), MLflow's runs and registry (``mlflow.db``), the Prefect server's flow runs,
deployments and artifacts (``prefect/``). The ports are chosen once and kept in
``ports.json`` (edit it to choose others), so an exported environment stays valid.

``up`` starts each as a detached process with its log under the stack folder, waits until
it answers, and writes ``stack.json`` (pids, addresses, the environment clients need);
``down`` stops them in reverse order (workers before the Prefect server), whoever started
them. The environment printed by ``env`` carries throwaway S3 keys for the local server
only; real keys are never written here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

LOOP_POOL = "flywheel"
GPU_POOL = "gpu"
BUCKET = "flywheel"
# Throwaway keys for the local S3 only: SeaweedFS takes them from its environment and then
# accepts no others.
LOCAL_S3_KEYS = {"AWS_ACCESS_KEY_ID": "flywheel-local", "AWS_SECRET_ACCESS_KEY": "flywheel-local-secret", "AWS_DEFAULT_REGION": "us-east-1"}
# The Prefect server keeps concurrency leases in memory unless told otherwise, and a restart
# forgets them: a slot held then stays taken. On disk (under its PREFECT_HOME) they survive it.
PREFECT_LEASES_ON_DISK = {"PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect.server.concurrency.lease_storage.filesystem"}


class StackError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _bin(name: str) -> str:
    """A console script of this environment (the venv's bin), else one on PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else (shutil.which(name) or name)


def _wait_http(url: str, timeout: float, proc: subprocess.Popen, log: Path, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"{what} exited with code {proc.returncode}; its log {log} ends:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status < 500:
                    return
        except urllib.error.HTTPError as err:
            if err.code < 500:  # it answers (S3 refuses a request without keys)
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise StackError(f"{what} did not answer at {url} within {timeout:.0f} s; its log {log} ends:\n{_tail(log)}")


def _tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _start(name: str, argv: list[str], env: dict[str, str], folder: Path) -> subprocess.Popen:
    log = folder / f"{name}.log"
    with open(log, "ab") as out:
        # A session of its own: `down` can stop the process and all its children together.
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, cwd=folder)


def client_env(state: dict) -> dict[str, str]:
    """What a client of the stack (the CLI, a test, CI) exports."""
    return {
        "PREFECT_API_URL": state["prefect_api"],
        "MLFLOW_TRACKING_URI": state["mlflow_uri"],
        "AWS_ENDPOINT_URL": state["s3_endpoint"],
        "FLYWHEEL_ARTIFACT_ROOT": f"s3://{BUCKET}/artifacts",
        **LOCAL_S3_KEYS,
    }


# SeaweedFS runs master, volume, filer and S3 gateway in one process, each on a port of its own
# (and a gRPC one): all chosen here, since its default gRPC port (+10000) can overflow.
WEED_PORTS = ("s3", "s3_grpc", "weed_master", "weed_master_grpc", "weed_volume", "weed_volume_grpc", "weed_filer", "weed_filer_grpc")
PORTS = ("mlflow", "prefect", *WEED_PORTS)


def stack_ports(folder: Path) -> dict[str, int]:
    """The stack's ports: those stored in ``ports.json``, else free ones, chosen now and stored."""
    path = folder / "ports.json"
    ports = json.loads(path.read_text()) if path.exists() else {}
    missing = [name for name in PORTS if name not in ports]
    if missing:
        ports.update({name: free_port() for name in missing})
        path.write_text(json.dumps(ports, indent=2))
    return ports


def _wait_ports_free(ports: dict[str, int], folder: Path, timeout: float = 30) -> None:
    """A stopped server's ports can stay busy a moment; another program on one is an error, not a new port."""
    deadline = time.monotonic() + timeout
    while busy := [f"{name} {port}" for name, port in ports.items() if not _port_free(port)]:
        if time.monotonic() > deadline:
            raise StackError(f"ports in use: {', '.join(busy)}; stop what holds them, or edit {folder / 'ports.json'} to choose others")
        time.sleep(0.5)


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _alive(pid: int) -> bool:
    try:  # reap it when it is our own child, else a dead one lingers as a zombie
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        os.killpg(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _weed_argv(folder: Path, ports: dict[str, int]) -> list[str]:
    data = folder / "s3"
    data.mkdir(exist_ok=True)
    return [
        _bin("weed"), "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-s3", f"-s3.port={ports['s3']}", f"-s3.port.grpc={ports['s3_grpc']}", "-s3.port.iceberg=0", "-s3.port.lance=0",
        f"-master.port={ports['weed_master']}", f"-master.port.grpc={ports['weed_master_grpc']}",
        f"-volume.port={ports['weed_volume']}", f"-volume.port.grpc={ports['weed_volume_grpc']}",
        f"-filer.port={ports['weed_filer']}", f"-filer.port.grpc={ports['weed_filer_grpc']}",
        # 1 GB volumes, as many as the disk holds (its 30 GB default leaves a small disk none).
        "-master.volumeSizeLimitMB=1024", "-volume.max=0",
    ]


def _wait_weed(folder: Path, ports: dict[str, int], timeout: float, proc: subprocess.Popen) -> None:
    """Until S3 answers and the master knows every volume on disk: after a restart, objects in a
    volume the volume server has not yet reported read as errors."""
    log = folder / "s3.log"
    _wait_http(f"http://127.0.0.1:{ports['s3']}/", timeout, proc, log, "S3 server (SeaweedFS)")
    on_disk = {int(p.stem.rsplit("_", 1)[-1]) for p in (folder / "s3").glob("*.dat")}
    deadline = time.monotonic() + timeout
    while on_disk:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{ports['weed_master']}/vol/status", timeout=5) as response:
                status = json.loads(response.read())
            known = {v["Id"] for dc in status["Volumes"]["DataCenters"].values() for rack in dc.values()
                     for node in rack.values() for v in node}
            if on_disk <= known:
                return
        except (OSError, ValueError, KeyError, TypeError):
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise StackError(f"SeaweedFS did not load its {len(on_disk)} volumes from {folder / 's3'}; its log {log} ends:\n{_tail(log)}")
        time.sleep(0.5)


def _ensure_bucket(endpoint: str) -> None:
    import boto3
    from botocore.exceptions import ClientError

    keys = {k.lower(): v for k, v in LOCAL_S3_KEYS.items() if k != "AWS_DEFAULT_REGION"}
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **keys)
    try:
        client.head_bucket(Bucket=BUCKET)
    except ClientError:
        client.create_bucket(Bucket=BUCKET)


def _clear_stale_state(folder: Path) -> None:
    """A stack.json whose processes are all gone (kill -9, a reboot) is left over, not a running stack."""
    path = folder / "stack.json"
    if not path.exists():
        return
    pids = json.loads(path.read_text()).get("pids", {})
    deadline = time.monotonic() + 10  # processes just killed can take a moment to go
    while any(_alive(pid) for pid in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.5)
    if any(_alive(pid) for pid in pids.values()):
        raise StackError(f"a stack already runs from {folder} (stack.json exists): `flywheel stack down` first")
    path.unlink()


def up(folder: Path, repo: Path | None = None, timeout: float = 300) -> dict:
    """Start the stack under ``folder`` (again: on the data and ports it had); returns its state (also in stack.json)."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    _clear_stale_state(folder)
    repo = Path(repo or Path(__file__).resolve().parents[1])
    ports = stack_ports(folder)
    _wait_ports_free(ports, folder)
    state: dict = {
        "folder": str(folder),
        "repo": str(repo),
        "s3_endpoint": f"http://127.0.0.1:{ports['s3']}",
        "mlflow_uri": f"http://127.0.0.1:{ports['mlflow']}",
        "prefect_api": f"http://127.0.0.1:{ports['prefect']}/api",
        "prefect_ui": f"http://127.0.0.1:{ports['prefect']}",
        "pids": {},
    }
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "AWS_"))}
    base.update(LOCAL_S3_KEYS)
    started: list[subprocess.Popen] = []

    def launch(name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        proc = _start(name, argv, env, folder)
        started.append(proc)
        state["pids"][name] = proc.pid
        (folder / "stack.json").write_text(json.dumps(state, indent=2))  # so `down` can stop a half-started stack
        return proc

    try:
        s3 = launch("s3", _weed_argv(folder, ports), base)
        _wait_weed(folder, ports, timeout, s3)
        _ensure_bucket(state["s3_endpoint"])

        mlflow_env = {**base, "MLFLOW_S3_ENDPOINT_URL": state["s3_endpoint"], "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        mlflow = launch(
            "mlflow",
            [_bin("mlflow"), "server", "--host", "127.0.0.1", "--port", str(ports["mlflow"]), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--artifacts-destination", f"s3://{BUCKET}/mlflow"],
            mlflow_env,
        )
        prefect_env = {**base, "PREFECT_HOME": str(folder / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                       "PREFECT_UI_API_URL": state["prefect_api"], **PREFECT_LEASES_ON_DISK}
        prefect = launch("prefect", [_bin("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(ports["prefect"])], prefect_env)
        _wait_http(state["mlflow_uri"] + "/health", timeout, mlflow, folder / "mlflow.log", "MLflow server")
        _wait_http(state["prefect_api"] + "/health", timeout, prefect, folder / "prefect.log", "Prefect server")

        # No HF_HUB_OFFLINE here: the workers run whichever config a deployment names, and a hub id in
        # model.base must be able to download (the bundled model and local folders never reach the hub).
        worker_env = {**base, **client_env(state), "PREFECT_HOME": str(folder / "prefect-worker"),
                      "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "TOKENIZERS_PARALLELISM": "false",
                      "PREFECT_WORKER_QUERY_SECONDS": "2",
                      "PYTHONPATH": str(repo)}
        for pool in (LOOP_POOL, GPU_POOL):
            subprocess.run([_bin("prefect"), "work-pool", "create", pool, "--type", "process", "--overwrite"],
                           env=worker_env, check=True, capture_output=True, timeout=120)
            launch(f"worker-{pool}", [_bin("prefect"), "worker", "start", "--pool", pool, "--name", f"{pool}-local"], worker_env)
    except BaseException:
        _stop_pids([proc.pid for proc in reversed(started)])
        (folder / "stack.json").unlink(missing_ok=True)
        raise
    (folder / "stack.json").write_text(json.dumps(state, indent=2))
    return state


def read_state(folder: Path) -> dict:
    path = Path(folder).resolve() / "stack.json"
    if not path.exists():
        raise StackError(f"no stack runs from {Path(folder).resolve()} (no stack.json): `flywheel stack up` first")
    return json.loads(path.read_text())


def _stop_pids(pids: list[int], grace: float = 15) -> None:
    """SIGTERM to each process group, then SIGKILL to those still there after ``grace`` seconds
    (all waited for together: a slow one does not hold up the others' grace)."""
    alive = []
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGTERM)
            alive.append(pid)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline:
        for pid in list(alive):
            try:  # reap it when it is our own child
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                alive.remove(pid)
        time.sleep(0.2)
    for pid in alive:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def down(folder: Path) -> list[str]:
    """Stop every process of the stack under ``folder``, workers first; returns their names."""
    folder = Path(folder).resolve()
    path = folder / "stack.json"
    if not path.exists():
        return []
    state = json.loads(path.read_text())
    names = list(state["pids"])
    workers = [n for n in names if n.startswith("worker-")]
    servers = [n for n in ("prefect", "mlflow", "s3") if n in names]
    for wave in (workers, servers):  # workers first: they would otherwise log the servers' absence
        _stop_pids([state["pids"][name] for name in wave])
    order = workers + servers
    path.unlink()
    return order


def describe(state: dict) -> str:
    env = client_env(state)
    lines = [
        f"Prefect UI:  {state['prefect_ui']}",
        f"MLflow UI:   {state['mlflow_uri']}",
        f"S3 endpoint: {state['s3_endpoint']}  (bucket {BUCKET})",
        f"workers:     pools {LOOP_POOL!r} and {GPU_POOL!r}; logs in {state['folder']}",
        "",
        "export these to use it:",
    ]
    lines += [f"export {k}={v}" for k, v in env.items()]
    return "\n".join(lines)
