"""The Prefect server restarts in the middle of a round: the round goes on and completes.

A real ``prefect server start`` on a loopback port, its SQLite database on disk, is stopped
(SIGTERM) while the round's promote stage runs and started again on the same port and
database some seconds later. The round's process is paused while the server stops, so the
outage starts at that point whatever the machine's load; what it meets then (the stage's
task-run events, the release of the train-promote slot, the figures, the round's artifacts,
the flow run's final state) waits for the server and goes on. Checked afterwards: the child's
exit code and log, the store's manifests (nothing redone), the history, the champion, and the
flow run, its task runs and the slot as the restarted server has them.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from infra.stack import PREFECT_LEASES_ON_DISK
from infra.store_factory import store_from_config
from tests.conftest import free_port
from tests.killed_round import kill_session, start_round, wait_for_log
from tests.tiny_round import tiny_round_config, word_band_prompt_file

pytestmark = [pytest.mark.slow, pytest.mark.stack]  # `make test-stack`

OUTAGE_S = 6  # between the server's exit and its start again (which adds its start-up time)
STAGES = ["prompts", "generate", "judge", "filter", "train", "evaluate", "regression", "promote"]
LOST_LEASE = "the Prefect server lost the lease on the slot"


class PrefectServer:
    """``prefect server start`` on a fixed loopback port with its home (and SQLite database) in ``folder``."""

    def __init__(self, folder: Path, **env: str):
        self.folder = folder
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        self.env.update(PREFECT_HOME=str(folder / "home"), PREFECT_SERVER_ANALYTICS_ENABLED="false", **env)
        self.log = folder / "server.log"
        self.proc: subprocess.Popen | None = None
        folder.mkdir(parents=True, exist_ok=True)

    def start(self, timeout: float = 300) -> None:
        prefect = Path(sys.executable).parent / "prefect"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
                                         env=self.env, cwd=self.folder, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the Prefect server exited:\n{self.log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(self.api + "/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"the Prefect server did not answer at {self.api}:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        """SIGTERM (the server and its children) and wait until it has exited."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass
        self.proc = None

    @contextlib.contextmanager
    def client(self) -> Iterator:
        """Prefect's sync client, pointed at this server."""
        from prefect import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: self.api}), get_client(sync_client=True) as client:
            yield client


@pytest.fixture
def prefect_server(tmp_path):
    """The stack's Prefect server (leases on disk, as `flywheel stack up` starts it), stopped whatever happens."""
    server = PrefectServer(tmp_path / "prefect-server", **PREFECT_LEASES_ON_DISK)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def _mlflow(config):
    from mlflow import MlflowClient

    from infra.tracking import tracking_uri

    return MlflowClient(tracking_uri(config.storage))


def _wait_task_runs_completed(client, flow_run_id, timeout: float = 60) -> list:
    """The flow run's task runs once all are Completed: the server records them from events, a moment after."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + timeout
    while True:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        if all(r.state_type.value == "COMPLETED" for r in runs) or time.monotonic() > deadline:
            return runs
        time.sleep(1)


def test_a_round_completes_through_a_prefect_server_restart(tiny_model, prefect_server, tmp_path):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    from flows.round import EXCLUSIVE_LIMIT
    from flows.round_records import read_history

    loop = "restart"
    config = tiny_round_config(tiny_model, loop, word_band_prompt_file(tmp_path / "prompts.jsonl"), tmp_path / "data")
    store = store_from_config(config.storage)
    key = lambda s: f"{loop}/round-001/{s}"  # noqa: E731

    child, log = start_round(config, tmp_path, PREFECT_API_URL=prefect_server.api)
    try:
        # run_stage logs "<key>: running" as the stage's work begins.
        wait_for_log(child, log, lambda text: f"{key('promote')}: running" in text)
        os.killpg(child.pid, signal.SIGSTOP)  # the round makes no call while the server stops
        try:
            prefect_server.stop()
        finally:
            os.killpg(child.pid, signal.SIGCONT)
        at_stop = {s: store.manifest(key(s)) for s in STAGES}
        time.sleep(OUTAGE_S)
        prefect_server.start()
        child.wait(timeout=600)
    finally:
        kill_session(child)
    text = log.read_text()

    assert child.returncode == 0, text[-4000:]
    assert "Traceback" not in text, text[-4000:]
    assert LOST_LEASE not in text, "the server's leases on disk did not survive its restart"
    # Nothing redone: the stages complete before the outage are the same manifests, the promote
    # stage (running when the server stopped) completed once, after the stop.
    assert all(at_stop[s] is not None for s in STAGES[:-1]), "the server stopped later than the promote stage"
    after = {s: store.manifest(key(s)) for s in STAGES}
    for s in STAGES[:-1]:
        assert after[s] == at_stop[s], f"{s} was redone"
    [row] = read_history(store, loop)
    assert row.round == 1 and row.champion_before == 0
    champion = store.read_json(f"{loop}/champion.json")
    assert champion["round"] == 1 if row.promoted else champion is None
    assert store.read_json(key("promote") + "/decision.json")["promote"] == row.promoted
    assert _mlflow(config).get_run(row.mlflow_run_id).info.status == "FINISHED"

    with prefect_server.client() as client:
        [run] = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[f"{loop}-round-001"])))
        assert run.state_type.value == "COMPLETED", run.state
        assert str(run.id) == row.flow_run_id
        tasks = _wait_task_runs_completed(client, run.id)
        assert sorted(t.name.rsplit("-", 1)[0] for t in tasks) == sorted(STAGES + ["figures"]), "a task ran twice"
        assert all(t.state_type.value == "COMPLETED" for t in tasks), [(t.name, t.state_name) for t in tasks]
        limit = client.read_global_concurrency_limit_by_name(EXCLUSIVE_LIMIT)
        assert limit.active_slots == 0, "the train-promote slot stayed taken"


def test_a_slot_held_across_a_restart_is_released_though_the_server_forgot_its_lease(tmp_path):
    """Prefect's default server keeps leases in memory: after its restart the lease is unknown,
    and releasing it would free nothing. The holder releases the slot by name instead."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.exclusive import exclusive, logger

    server = PrefectServer(tmp_path / "prefect-server")  # Prefect's defaults
    # Its own handler: Prefect's logging set-up, on its first client, replaces the root's (caplog's).
    warnings = logging.handlers.BufferingHandler(capacity=100)
    logger.addHandler(warnings)
    try:
        server.start()
        with temporary_settings({PREFECT_API_URL: server.api}):
            with exclusive("restart-slot"):
                server.stop()
                server.start()
        with server.client() as client:
            assert client.read_global_concurrency_limit_by_name("restart-slot").active_slots == 0
            with exclusive("restart-slot"):  # and the next holder takes it at once
                assert client.read_global_concurrency_limit_by_name("restart-slot").active_slots == 1
    finally:
        logger.removeHandler(warnings)
        server.stop()
    assert any(LOST_LEASE in r.getMessage() for r in warnings.buffer)
