"""Who runs a trial: the worker's identity (host, pid and the process's start time, so a reused pid is
not mistaken for the worker) in the trial's user attributes, a heartbeat while it trains, and the
test for a RUNNING trial whose worker is gone (to take it up again on resume).

On the worker's own host a dead worker is known at once (its pid is gone or is another process);
elsewhere only its heartbeat tells, so a trial counts as orphaned once the heartbeat is STALE_S old.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from nntrain.atomic import process_alive

WORKER_ATTR = "worker"
HEARTBEAT_ATTR = "heartbeat"
HEARTBEAT_S = 30.0      # how often a training worker says it is alive
STALE_S = 180.0         # a trial on another host is orphaned after this long without a heartbeat
UNOWNED_GRACE_S = 10.0  # a RUNNING trial with no worker recorded yet (taken a moment ago, or never)


def process_start(pid: int) -> str | None:
    """The start time of process `pid` in clock ticks since boot (Linux), or None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else None   # field 22 of stat; fields[0] is field 3


@dataclass(frozen=True)
class WorkerId:
    """A worker process, as recorded on each trial it runs."""

    host: str
    pid: int
    started: str | None
    index: int

    @classmethod
    def this_process(cls, index: int) -> WorkerId:
        return cls(socket.gethostname(), os.getpid(), process_start(os.getpid()), index)

    def to_attr(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}"


def is_alive(owner: Mapping[str, Any]) -> bool:
    """Whether the worker `owner` (a WORKER_ATTR, on this host) still runs."""
    pid = int(owner.get("pid", -1))
    if not process_alive(pid):
        return False
    started = owner.get("started")   # a pid reused by another process has another start time
    return started is None or process_start(pid) in (None, started)


def is_orphan(user_attrs: Mapping[str, Any], started_at: float | None, now: float | None = None,
              host: str | None = None) -> bool:
    """Whether a RUNNING trial (its user attributes, its start as a Unix time) has lost its worker."""
    now = time.time() if now is None else now
    host = socket.gethostname() if host is None else host
    owner = user_attrs.get(WORKER_ATTR)
    if not isinstance(owner, Mapping):
        return started_at is None or now - started_at > UNOWNED_GRACE_S
    if owner.get("host") == host:
        return not is_alive(owner)
    beat = user_attrs.get(HEARTBEAT_ATTR, started_at)
    return beat is None or now - float(beat) > STALE_S


class Heartbeat:
    """While in the `with` block, a daemon thread records the time in the trial's HEARTBEAT_ATTR every
    `interval` seconds (and once at the start)."""

    def __init__(self, storage: Any, trial_id: int, interval: float = HEARTBEAT_S):
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{trial_id}", daemon=True)

    def _beat(self) -> None:
        while True:
            try:
                self.storage.set_trial_user_attr(self.trial_id, HEARTBEAT_ATTR, time.time())
            except Exception:  # noqa: BLE001  (finished meanwhile, storage away: the main thread will see)
                return
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
