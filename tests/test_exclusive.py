"""Two loops never train or promote at once: the round holds the one slot of a Prefect global
concurrency limit from training through promotion. Checked on a real (temporary) Prefect API
by the order of events, not by timing."""

from __future__ import annotations

import threading
import time

from flows.round import EXCLUSIVE_LIMIT, exclusive


def test_second_holder_waits_for_the_first(prefect_harness):
    events: list[str] = []
    first_inside = threading.Event()

    def first():
        with exclusive(EXCLUSIVE_LIMIT):
            events.append("first in")
            first_inside.set()
            time.sleep(3)  # a second loop arrives meanwhile
            events.append("first out")

    def second():
        first_inside.wait()
        with exclusive(EXCLUSIVE_LIMIT):
            events.append("second in")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert events == ["first in", "first out", "second in"]

    from prefect import get_client

    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(EXCLUSIVE_LIMIT)
    assert limit.limit == 1 and limit.active_slots == 0


HOLDER = """
import logging, sys, time
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
from flows.exclusive import exclusive
with exclusive("flywheel-train-promote"):
    print("held", flush=True)
    time.sleep(float(sys.argv[1]))
"""


def test_a_killed_holder_frees_the_slot_of_the_temporary_api(tmp_path):
    """With Prefect's temporary API the slot is an flock beside its database: a holder killed with
    SIGKILL (a round killed in training) frees it, and the rerun on the same database goes on."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PYTHONPATH=str(Path(__file__).parents[1]), PYTHONUNBUFFERED="1")

    def holder(seconds: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", HOLDER, seconds], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)

    def line(process: subprocess.Popen, timeout: float = 120) -> str:
        """The process's next line of output; fails rather than hang when none comes."""
        import select

        ready, _, _ = select.select([process.stdout], [], [], timeout)
        assert ready, f"no output within {timeout} s"
        return process.stdout.readline().strip()

    first = holder("600")
    second = None
    try:
        assert line(first) == "held"
        second = holder("0")
        assert "waiting for the slot" in line(second), "the second holder did not find the slot taken"
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
        assert line(second) == "held", "the killed holder's slot was not freed"
        assert second.wait(timeout=60) == 0
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
