"""Two processes never run rounds of the same loop at once: the loop's lease (infra/lease.py),
in a local folder (an flock) and on a real S3 endpoint (conditional PUTs, moto's server). The
holders are other processes, killed for real; the second `flywheel round` is refused through the
CLI, before it writes anything."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from infra.lease import LEASE_FILE, LoopBusyError, hold_loop
from infra.store_factory import open_store

REPO = Path(__file__).resolve().parents[1]

HOLDER = textwrap.dedent("""
    import sys, time
    from infra.lease import hold_loop
    from infra.store_factory import open_store
    store = open_store(sys.argv[1], sys.argv[2], sys.argv[3] or None)
    with hold_loop(store, "busy", ttl_s=float(sys.argv[4])):
        print("held", flush=True)
        time.sleep(float(sys.argv[5]))
    print("released", flush=True)
""")


def _start_holder(root: str, tmp_path: Path, endpoint: str = "", ttl_s: float = 120, hold_s: float = 600) -> subprocess.Popen:
    """Another process holding the loop 'busy'; returns once it says it holds it."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, root, str(tmp_path / "cache"), endpoint, str(ttl_s), str(hold_s)],
                              cwd=REPO, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert holder.stdout.readline().strip() == "held", "the holder process never took the lease"
    return holder


def _kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


@pytest.fixture(params=["local", "s3"])
def store_root(request, tmp_path):
    """(root, endpoint) of a fresh artifact store: a local folder, or a bucket on moto's S3 server."""
    if request.param == "local":
        return str(tmp_path / "artifacts"), ""
    s3 = request.getfixturevalue("s3_server")
    bucket = f"lease-{uuid.uuid4().hex[:8]}"
    s3.client().create_bucket(Bucket=bucket)
    return f"s3://{bucket}/fw", s3.url


def test_a_held_loop_refuses_a_second_holder_naming_the_first(store_root, tmp_path):
    root, endpoint = store_root
    holder = _start_holder(root, tmp_path, endpoint)
    try:
        store = open_store(root, tmp_path / "cache-2", endpoint or None)
        with pytest.raises(LoopBusyError) as refused:
            with hold_loop(store, "busy"):
                pytest.fail("two processes held the same loop")
        assert f"pid {holder.pid} on " in str(refused.value) and "storage.loop_wait_s" in str(refused.value)
        with hold_loop(store, "another-loop"):  # other loops are free
            pass
    finally:
        _kill(holder)


def test_a_killed_holder_frees_the_loop_at_once(store_root, tmp_path):
    # kill -9 leaves an S3 lease object behind; its process is gone from this machine, so it is
    # stale now, not after the TTL (a local flock dies with its process).
    root, endpoint = store_root
    _kill(_start_holder(root, tmp_path, endpoint, ttl_s=3600))
    store = open_store(root, tmp_path / "cache-2", endpoint or None)
    with hold_loop(store, "busy"):
        held = store.read_json(f"busy/{LEASE_FILE}") if root.startswith("s3://") else json.loads(Path(store.uri(f"busy/{LEASE_FILE}")).read_text())
        assert held["pid"] == os.getpid()


def test_a_waiting_holder_gets_the_loop_when_the_first_releases_it(store_root, tmp_path):
    root, endpoint = store_root
    holder = _start_holder(root, tmp_path, endpoint, hold_s=3)
    try:
        store = open_store(root, tmp_path / "cache-2", endpoint or None)
        with hold_loop(store, "busy", wait_s=300):
            # Inside only once the first process let go of the loop.
            assert holder.stdout.readline().strip() == "released"
    finally:
        holder.wait(timeout=60)


def test_an_s3_lease_expires_and_only_one_of_two_takes_it_over(s3_server, tmp_path):
    bucket = f"lease-{uuid.uuid4().hex[:8]}"
    s3_server.client().create_bucket(Bucket=bucket)
    store = open_store(f"s3://{bucket}/fw", tmp_path / "cache", s3_server.url)
    key = f"fw/busy/{LEASE_FILE}"
    elsewhere = {"holder": "x", "host": "another-machine", "pid": 1, "since": "2026-01-01T00:00:00+00:00"}
    s3_server.client().put_object(Bucket=bucket, Key=key, Body=json.dumps({**elsewhere, "expires_at": time.time() + 3600}))
    with pytest.raises(LoopBusyError, match="pid 1 on another-machine"):  # alive elsewhere: not ours to judge
        with hold_loop(store, "busy"):
            pass
    s3_server.client().put_object(Bucket=bucket, Key=key, Body=json.dumps({**elsewhere, "expires_at": time.time() - 1}))
    # Two takers of the expired lease at once: If-Match lets exactly one in.
    inside, refused, go = [], [], threading.Barrier(2)

    def take(name: str) -> None:
        mine = open_store(f"s3://{bucket}/fw", tmp_path / name, s3_server.url)
        go.wait()
        try:
            with hold_loop(mine, "busy"):
                inside.append(name)
                time.sleep(2)
        except LoopBusyError:
            refused.append(name)

    threads = [threading.Thread(target=take, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(inside) == 1 and len(refused) == 1, (inside, refused)
    # Released: the object is gone, the loop free.
    assert store.read_json(f"busy/{LEASE_FILE}") is None


def test_a_second_round_on_a_busy_loop_is_refused_before_writing(tiny_model, prefect_harness, tmp_path, capsys):
    from flows.cli import main

    data = tmp_path / "data"
    holder = _start_holder(str(data / "artifacts"), tmp_path)
    try:
        code = main(["round", "--set", f"storage.data_dir={data}", "--set", "loop=busy", "--set", f"model.base={tiny_model}"])
    finally:
        _kill(holder)
    err = capsys.readouterr().err
    assert code == 4, err[-2000:]
    assert f"loop 'busy' is busy: pid {holder.pid} on " in err and "Traceback" not in err
    assert sorted(p.name for p in (data / "artifacts" / "busy").iterdir()) == [LEASE_FILE]
