"""One round of a loop at a time: a lease on the loop, held in the artifact store.

Two ``flywheel loop`` processes on the same loop would both read the history, both pick the
same next round number and write the same stages. So a round first takes the loop's lease
(``<root>/<loop>/loop.lease``), and a second process finds it held: it waits up to
``storage.loop_wait_s`` and is then refused, with who holds the loop and since when.

* In a local folder the lease is an ``flock`` on that file: the kernel drops it when the holder
  dies, even by kill -9, so a killed round can be rerun at once.
* On S3 it is an object written with a conditional PUT (``If-None-Match: *``), renewed by a
  heartbeat (``If-Match`` its last ETag) every third of ``storage.loop_lease_s``. A holder that
  stops renewing (killed, its machine gone) leaves a lease that expires; one on this machine
  whose process is gone is stale at once. A stale lease is taken over with ``If-Match``, so of
  two processes taking it over only one wins. S3, SeaweedFS and moto all honour these headers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

logger = logging.getLogger("flywheel.lease")

LEASE_FILE = "loop.lease"
POLL_S = 2.0  # how often a waiting process looks again
_HELD: dict[str, int] = {}  # the leases this process holds, by where they live: the holding thread


class LoopBusyError(RuntimeError):
    """Another process holds the loop's lease."""


def _holder() -> dict[str, Any]:
    return {"holder": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _process_gone(record: dict, where: str) -> bool:
    """True when the record names a process on this machine that no longer runs, or this very
    process while none of its threads holds the lease (a release that failed)."""
    if record.get("host") != socket.gethostname() or not isinstance(record.get("pid"), int):
        return False
    if record["pid"] == os.getpid():
        return where not in _HELD
    try:
        os.kill(record["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class LocalLease:
    """An flock on ``path``; the file's text says who holds it (for the refusal message)."""

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    def try_acquire(self, record: dict) -> dict | None:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            try:
                return json.loads(self.path.read_text() or "{}")
            except (OSError, ValueError):
                return {}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(record).encode())
        self._fd = fd
        return None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


class S3Lease:
    """A lease object renewed by a heartbeat; see the module's docstring."""

    def __init__(self, client: Any, bucket: str, key: str, ttl_s: float):
        self.client, self.bucket, self.key, self.ttl_s = client, bucket, key, ttl_s
        self.where = f"s3://{bucket}/{key}"
        self._etag: str | None = None
        self._record: dict | None = None
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def _put(self, record: dict, **condition: str) -> str | None:
        """The new ETag, or None when the condition failed (someone else's lease is there)."""
        from botocore.exceptions import ClientError

        body = json.dumps({**record, "expires_at": time.time() + self.ttl_s}).encode()
        try:
            return self.client.put_object(Bucket=self.bucket, Key=self.key, Body=body, **condition)["ETag"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                return None
            raise

    def _read(self) -> tuple[dict, str] | None:
        from botocore.exceptions import ClientError

        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        try:
            record = json.loads(answer["Body"].read())
        except ValueError:
            record = {}
        return record, answer["ETag"]

    def try_acquire(self, record: dict) -> dict | None:
        for _ in range(5):  # a few races lost in a row: report the holder of the moment
            etag = self._put(record, IfNoneMatch="*")
            if etag is None:
                current = self._read()
                if current is None:
                    continue  # released meanwhile
                held, held_etag = current
                if held.get("holder") == record["holder"]:
                    etag = held_etag  # our own put, answered late
                elif held.get("expires_at", 0) < time.time() or _process_gone(held, self.where):
                    logger.warning("loop lease %s: taking over the stale lease of pid %s on %s", self.key,
                                   held.get("pid"), held.get("host"))
                    etag = self._put(record, IfMatch=held_etag)
                    if etag is None:
                        continue
                else:
                    return held
            self._etag, self._record = etag, record
            self._heartbeat = threading.Thread(target=self._renew_until_released, name="loop-lease", daemon=True)
            self._heartbeat.start()
            return None
        return self._read()[0] if self._read() else {}

    def _renew_until_released(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                etag = self._put(self._record, IfMatch=self._etag)
            except Exception as exc:  # a server hiccup: the next beat tries again, well within the TTL
                logger.warning("loop lease %s: renewal failed (%s); trying again", self.key, exc)
                continue
            if etag is None:
                logger.error("loop lease %s: lost to another process; this round's results may collide with its", self.key)
                return
            self._etag = etag

    def release(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=30)
        try:
            current = self._read() if self._etag else None
            if current is not None and current[0].get("holder") == (self._record or {}).get("holder"):
                self.client.delete_object(Bucket=self.bucket, Key=self.key)
        except Exception as exc:  # S3 away: the lease expires, or this machine sees its process gone
            logger.warning("loop lease %s: could not release it (%s); it frees itself", self.key, exc)
        self._etag = None


def describe(record: dict) -> str:
    if not record:
        return "another process (its lease names no holder)"
    return f"pid {record.get('pid')} on {record.get('host')}, since {record.get('since')}"


@contextlib.contextmanager
def hold_loop(store: Any, loop: str, wait_s: float = 0.0, ttl_s: float = 120.0) -> Iterator[None]:
    """Hold the loop's lease for the block; wait up to ``wait_s`` for it, then raise LoopBusyError.
    Reentrant: in the thread that holds it already (``flywheel round`` around its round) it does nothing."""
    where = store.uri(f"{loop}/{LEASE_FILE}")
    if _HELD.get(where) == threading.get_ident():
        yield
        return
    lease = store.lease(f"{loop}/{LEASE_FILE}", ttl_s)
    record = _holder()
    deadline = time.monotonic() + wait_s
    while (held := lease.try_acquire(record)) is not None:
        if time.monotonic() >= deadline:
            waited = f" after waiting {wait_s:.0f} s" if wait_s > 0 else ""
            raise LoopBusyError(
                f"loop {loop!r} is busy{waited}: {describe(held)} holds its lease ({where}), "
                "running a round. Wait for it to finish, or set storage.loop_wait_s to wait for it.")
        time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
    _HELD[where] = threading.get_ident()
    try:
        yield
    finally:
        del _HELD[where]
        lease.release()
