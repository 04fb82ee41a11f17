"""One loop at a time: the one slot of a Prefect global concurrency limit, held under a lease
(with Prefect's temporary API: an flock on this machine, see ``exclusive``).

    with exclusive("flywheel-train-promote"):
        ...  # train, evaluate, promote

Prefect's own ``concurrency()`` context fails the round when the API is away at the wrong
moment: it releases the slot through a new client, and a new client does not resend a
request whose connection was refused. A Prefect server restarted while a round holds the slot
also forgets the slot's lease (the server keeps leases in memory unless told otherwise), so
the release frees nothing and every later round waits for the slot forever.

Here every call (take, renew, release) is retried through an outage of a minute
(``PREFECT_RESTART``), and a lease the server lost while this process was renewing it is
released by name instead (its slot is still counted; it can only have been this holder's).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator
from uuid import UUID

from infra.retries import call_with_retries

LEASE_S = 300.0  # the lease's length; it is renewed every RENEW_EVERY of it while held
RENEW_EVERY = 0.5
# A restarted Prefect server answers again within a minute: wait 2, 4, 8, 16, 32, 32, 32 s
# (each jittered to 50-100%) before giving up, 63-126 s in all; Prefect's own client waits
# 2+4+8+16+32 s for a server it has reached before (PREFECT_CLIENT_MAX_RETRIES=5).
PREFECT_RESTART: dict[str, Any] = {"attempts": 8, "first_delay": 2.0, "max_delay": 32.0}

logger = logging.getLogger("flywheel.exclusive")


def _log() -> logging.Logger | logging.LoggerAdapter:
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logger


def _status(err: BaseException) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


class _Lease:
    """The slot's lease: taken, renewed in a thread of its own, released."""

    def __init__(self, name: str):
        self.name = name
        self.lease_id: UUID | None = None
        self.taken_at = 0.0  # time.monotonic() of the grant
        self.renewed_at = 0.0  # ... and of the last grant or renewal the server confirmed
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _api(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return call_with_retries(f"Prefect API: {what} {self.name}", fn, *args, **PREFECT_RESTART, **kwargs)

    def take(self, client) -> None:
        """Wait for the slot (another holder answers 423 Locked, with when to ask again)."""
        waiting = False
        while True:
            try:
                response = self._api("take slot of", client.increment_concurrency_slots_with_lease,
                                     names=[self.name], slots=1, mode="concurrency", lease_duration=LEASE_S)
            except Exception as err:
                if _status(err) != 423:
                    raise
                if not waiting:
                    _log().info("waiting for the slot of %s: another loop is training or promoting", self.name)
                    waiting = True
                time.sleep(float(err.response.headers.get("Retry-After", 1)))
                continue
            body = response.json()
            if not body.get("limits"):
                raise RuntimeError(f"Prefect API: the concurrency limit {self.name} does not exist")
            self.lease_id = UUID(body["lease_id"])
            self.taken_at = self.renewed_at = time.monotonic()
            # In this context: the same API (a temporary_settings' PREFECT_API_URL) and the same run logger.
            context = contextvars.copy_context()
            self._thread = threading.Thread(target=context.run, args=(self._keep,), name=f"lease-{self.name}", daemon=True)
            self._thread.start()
            return

    def _renew(self, client) -> None:
        try:
            self._api("renew lease on", client.renew_concurrency_lease, lease_id=self.lease_id, lease_duration=LEASE_S)
            self.renewed_at = time.monotonic()
        except Exception as err:
            if _status(err) != 410:  # 410 Gone: the server no longer knows the lease
                raise
            self.lost = True

    def _keep(self) -> None:
        from prefect import get_client

        with get_client(sync_client=True) as client:
            while not self._stop.wait(LEASE_S * RENEW_EVERY) and not self.lost:
                try:
                    self._renew(client)
                except Exception as err:  # training goes on; the next renewal tries again
                    logger.warning("could not renew the lease on the slot of %s: %s", self.name, err)

    def release(self, client) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if not self.lost:
            self._renew(client)  # is the lease still known? (a server restarted with in-memory leases forgets it)
        if not self.lost:
            self._api("release slot of", client.release_concurrency_slots_with_lease, lease_id=self.lease_id)
        elif time.monotonic() - self.renewed_at < LEASE_S:
            # Not expired, so the server's lease sweeper did not free the slot: it still counts this holder.
            _log().warning("the Prefect server lost the lease on the slot of %s (restarted while it was held?): "
                           "releasing the slot by name", self.name)
            self._api("release slot of", client.release_concurrency_slots, names=[self.name], slots=1,
                      occupancy_seconds=max(time.monotonic() - self.taken_at, 1e-3))
        else:
            _log().warning("the lease on the slot of %s expired while the Prefect API was unreachable: another loop "
                           "may have trained or promoted meanwhile", self.name)


@contextlib.contextmanager
def _machine_lock(path: Path, name: str) -> Iterator[None]:
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _log().info("waiting for the slot of %s: another loop on this machine is training or promoting", name)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def exclusive(name: str) -> Iterator[None]:
    """Hold the one slot of the Prefect global concurrency limit ``name`` (created on first use);
    with Prefect's temporary API (no ``PREFECT_API_URL``), an flock beside its database instead."""
    from prefect import get_client
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url is None:
        # The temporary API keeps slot leases in its own memory: a round killed inside the slot
        # would leave it taken in the database for good, and the rerun would wait forever. The
        # processes that share that database share its folder, and the kernel drops a dead
        # holder's flock at once.
        with _machine_lock(Path(settings.home) / f"{name}.lock", name):
            yield
        return

    with get_client(sync_client=True) as client:
        lease = _Lease(name)
        lease._api("concurrency limit", client.upsert_global_concurrency_limit_by_name, name, 1)
        lease.take(client)
        try:
            yield
        finally:
            lease.release(client)
