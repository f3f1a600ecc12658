"""The watch over a running deployment's children: a worker, the KV store or the HTTP door that
dies is started again with exponential back-off; the scheduler is not (it holds every request's
state: when it dies, the deployment is over).

    child exits ──▶ restartable? ──no──▶ give up (Deployment.wait returns its name)
                        │yes
                        ▼
          crashed quickly max_restarts times in a row? ──yes──▶ give up
                        │no
                        ▼
          wait backoff (doubling, at most max_backoff_s) ──▶ spawn it again, same flags

A run that lasted ``stable_s`` or more resets the count, so a child that fails once a day is
always restarted, and one that cannot start at all is given up on after a bounded time. What a
restart means for requests is the services' business: the scheduler requeues a lost worker's
requests and the restarted worker joins again; a restarted store is registered with again by
the scheduler and the workers (docs/failures.md).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from fastswitch.deploy.children import Child
from fastswitch.deploy.flags import ChildSpec

log = logging.getLogger(__name__)

RESTARTABLE = ("worker", "kvstore", "api")


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """How the supervisor restarts a child; ``enabled`` False gives up on the first exit."""

    enabled: bool = True
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    max_restarts: int = 5  # quick crashes in a row before giving up
    stable_s: float = 15.0  # a run this long resets the count (it was up, not crash-looping)

    def delay(self, crashes: int) -> float:
        """The wait before restart number `crashes` (1, 2, ...) of a row of quick crashes."""
        return min(self.backoff_s * 2 ** max(0, crashes - 1), self.max_backoff_s)


@dataclass(slots=True)
class _Track:
    started: float
    crashes: int = 0
    due: float | None = None  # when the pending restart happens
    restarts: int = 0


class Supervisor:
    """Owns one thread that watches the children (polled every ``poll_s``) and restarts them.

    ``children`` is the deployment's list: a restart replaces the dead entry in place, under
    ``lock`` (the deployment reads it under the same lock). ``respawn(spec)`` starts a child.
    ``notify(line)`` is told of every exit, restart and give-up (``fastswitch up`` prints them).
    Invariant: after ``stop`` returns, the thread is gone and starts nothing more.
    """

    def __init__(
        self,
        children: list[Child],
        lock: threading.Lock,
        respawn: Callable[[ChildSpec], Child],
        policy: RestartPolicy,
        notify: Callable[[str], None],
        *,
        poll_s: float = 0.1,
    ) -> None:
        self._children = children
        self._lock = lock
        self._respawn = respawn
        self._policy = policy
        self._notify = notify
        self._poll_s = poll_s
        now = time.monotonic()
        self._tracks = {c.name: _Track(now) for c in children}
        self._stopping = threading.Event()
        self.gave_up = threading.Event()
        self.gave_up_on: str | None = None
        self._thread = threading.Thread(target=self._run, name="fastswitch-supervisor", daemon=True)

    @property
    def restarts(self) -> dict[str, int]:
        """Restarts so far, by child name."""
        return {name: t.restarts for name, t in self._tracks.items()}

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        try:
            while not self._stopping.wait(self._poll_s):
                if self._step():
                    return
        except Exception:  # the supervisor must not die silently: the deployment gives up
            log.exception("supervisor failed")
            self.gave_up_on = self.gave_up_on or "supervisor"
            self.gave_up.set()

    def _step(self) -> bool:
        """One look at every child; True once the supervisor gave up."""
        now = time.monotonic()
        with self._lock:
            current = list(enumerate(self._children))
        for index, child in current:
            track = self._tracks[child.name]
            if track.due is None and not child.alive() and self._on_exit(child, track, now):
                return True
            if track.due is not None and now >= track.due and not self._stopping.is_set():
                self._restart(index, child, track)
        return False

    def _on_exit(self, child: Child, track: _Track, now: float) -> bool:
        code = child.proc.returncode
        policy = self._policy
        if not policy.enabled or child.spec.service not in RESTARTABLE:
            self._give_up(child.name, f"{child.name} exited with code {code}")
            return True
        track.crashes = 1 if now - track.started >= policy.stable_s else track.crashes + 1
        if track.crashes > policy.max_restarts:
            self._give_up(
                child.name,
                f"{child.name} exited with code {code}, its {track.crashes}th quick exit in a "
                "row; not restarting it",
            )
            return True
        delay = policy.delay(track.crashes)
        track.due = now + delay
        self._notify(
            f"{child.name} exited with code {code}; restarting it in {delay:.1f}s "
            f"(restart {track.restarts + 1})"
        )
        return False

    def _restart(self, index: int, old: Child, track: _Track) -> None:
        try:
            new = self._respawn(old.spec)
        except Exception as err:  # cannot even exec: counts as a quick crash
            log.warning("restart failed", extra={"child": old.name, "why": str(err)})
            track.crashes += 1
            track.due = time.monotonic() + self._policy.delay(track.crashes)
            return
        with self._lock:
            self._children[index] = new
        old.close()
        track.due = None
        track.started = time.monotonic()
        track.restarts += 1
        self._notify(f"{old.name} restarted (pid {new.pid}, restart {track.restarts})")

    def _give_up(self, name: str, line: str) -> None:
        self._notify(line)
        self.gave_up_on = name
        self.gave_up.set()
