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
