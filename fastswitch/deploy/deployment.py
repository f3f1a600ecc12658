"""Orchestration of one deployment: the layout, the start order with health checks, the watch
over children during the start, and the ordered stop."""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from client import AsyncClient, DeadlineExceeded, Unavailable
from fastswitch.deploy.bridge import run_sync
from fastswitch.deploy.children import Child, spawn, sweep_shared_memory, terminate
from fastswitch.deploy.config import DeploymentConfig, DeploymentError, StartRefused
from fastswitch.deploy.flags import (
    SERVICES,
    ChildSpec,
    CommandBuilder,
    Layout,
    child_specs,
    serve_command,
)
from fastswitch.deploy.keys import LauncherKeys
from fastswitch.deploy.ports import free_ports
from fastswitch.deploy.preflight import check_model, check_ports, check_store, check_tls, place
from fastswitch.deploy.supervisor import RestartPolicy, Supervisor
from servekit.healthcheck import wait_http_ok
from servekit.service import wait_healthy

T = TypeVar("T")

log = logging.getLogger(__name__)

_MAX_UNIX_PATH = 107


class Deployment:
    """A KV store, N workers and the scheduler, as child processes of this one.

    Built from its config: ``Deployment(DeploymentConfig(workers=2, port=0))``; keyword settings
    are a shorthand for the same (``Deployment(workers=2, port=0)``) and, given with a config,
    override its fields. ``with Deployment(cfg) as d: AsyncClient(d.address) ...`` -- or
    ``start()`` and ``stop()``. ``stop()`` is idempotent and also runs when ``start()`` fails;
    afterwards no child remains (``alive_pids()`` is empty) and the runtime directory is gone.
    ``command`` builds each child's command line (tests inject dummies). ``child(name)`` is the
    handle of one child process (kvstore, scheduler, worker-N), e.g. to kill it.

    Once started, a supervisor thread restarts a worker, the store or the door that exits
    (``supervisor.py``; ``restarts`` counts them, ``notify(line)`` hears of each); ``wait``
    returns when it gives up: the scheduler exited, or a child kept crashing.
    """

    def __init__(
        self,
        config: DeploymentConfig | None = None,
        /,
        *,
        command: CommandBuilder = serve_command,
        notify: Callable[[str], None] | None = None,
        **settings: Any,
    ) -> None:
        base = DeploymentConfig() if config is None else config
        self.config = replace(base, **settings) if settings else base
        self._command = command
        self._notify = notify or _log_line
        self._layout: Layout | None = None
        self._children: list[Child] = []
        self._lock = threading.Lock()  # the supervisor replaces restarted children in place
        self._supervisor: Supervisor | None = None
        self._started = False
        self._stopped = False
        self._keys = LauncherKeys.make() if self.config.api_keys is not None else LauncherKeys()

    # ------------------------------------------------------------------ public

    @property
    def address(self) -> str:
        """The scheduler's public address, ``127.0.0.1:PORT``."""
        return self._require_layout().scheduler_address

    @property
    def http_url(self) -> str:
        """The OpenAI-compatible door, ``http://127.0.0.1:PORT`` (its API under ``/v1``);
        RuntimeError when the deployment has none (``http_port`` None)."""
        url = self._require_layout().http_url
        if url is None:
            raise RuntimeError("this deployment has no HTTP door (http_port is None)")
        return url

    @property
    def tls_ca(self) -> Path | None:
        """The CA file a client trusts to dial this deployment's TLS listeners
        (``AsyncClient(d.address, tls_ca=d.tls_ca)``); None: they are plaintext."""
        return self.config.trusted_ca

    @property
    def admin_key(self) -> str:
        """An admin key of this deployment's scheduler ("" when it has no keys: it is open);
        made for this deployment, valid until it stops."""
        return self._keys.admin_key

    @property
    def port(self) -> int:
        return self._require_layout().port

    @property
    def metrics_ports(self) -> dict[str, int]:
        """Prometheus port of every child, by name: kvstore, scheduler, worker-0, ..."""
        return dict(self._require_layout().metrics_ports)

    @property
    def deployment_id(self) -> str:
        return self._require_layout().deployment_id

    @property
    def run_dir(self) -> Path:
        return self._require_layout().run_dir

    @property
    def kvstore_address(self) -> str:
        """The KV store's address (its Unix socket, or the external store's), for its stats."""
        return self._require_layout().kvstore_address

    @property
    def log_dir(self) -> Path | None:
        """Where the children's logs are: the config's log_dir (kept after stop), else the
        runtime dir (removed on stop); None with ``verbose`` (they go to this stderr)."""
        if self.config.verbose:
            return None
        return self.config.log_dir or self.run_dir

    @property
    def children(self) -> dict[str, Child]:
        """Every child, by name, in start order (running or exited; the latest run of a
        restarted one)."""
        return {c.name: c for c in self._current()}

    def child(self, name: str) -> Child:
        """The handle of child `name` (kvstore, scheduler, worker-N); KeyError if none."""
        current = self._current()
        for c in current:
            if c.name == name:
                return c
        raise KeyError(f"no child named {name!r}; have {[c.name for c in current]}")

    def pid_of(self, name: str) -> int | None:
        """Pid of the child `name` (kvstore, scheduler, worker-N) while it runs."""
        return next((c.pid for c in self._current() if c.name == name and c.alive()), None)

    def alive_pids(self) -> list[int]:
        """Pids of the children still running (empty after stop())."""
        return [c.pid for c in self._current() if c.alive()]

    @property
    def restarts(self) -> dict[str, int]:
        """How many times each child was restarted since start (empty before)."""
        return {} if self._supervisor is None else self._supervisor.restarts

    def _current(self) -> list[Child]:
        with self._lock:
            return list(self._children)

    def __enter__(self) -> Deployment:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Starts every child and returns once all are healthy and every worker joined.

        DeploymentError (with the failing child's log tail) when a child exits or the start takes
        longer than ``start_timeout_s``; everything started is stopped first.
        """
        if self._started:
            raise RuntimeError("a Deployment starts once")
        self._started = True
        try:
            self._layout = self._make_layout()
            run_sync(self._bring_up)
            cfg = self.config
            policy = RestartPolicy(
                enabled=cfg.restart,
                backoff_s=cfg.restart_backoff_s,
                max_backoff_s=cfg.restart_max_backoff_s,
                max_restarts=cfg.max_restarts,
            )
            self._supervisor = Supervisor(
                self._children, self._lock, self._spawn_one, policy, self._notify
            )
            self._supervisor.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stops the scheduler, then the workers, then the KV store; removes the runtime dir."""
        if self._stopped:
            return
        self._stopped = True
        if self._supervisor is not None:
            self._supervisor.stop()  # nothing is restarted from here on
        by_service = {s: [c for c in self._children if c.spec.service == s] for s in SERVICES}
        for service in SERVICES:  # api (drains), scheduler, worker, kvstore
            terminate(by_service[service], self.config.stop_timeout_s)
        for child in self._children:
            child.close()
        if self._layout is not None:
            sweep_shared_memory(self._layout.deployment_id)
        if self._layout is not None and self._layout.run_dir.exists():
            shutil.rmtree(self._layout.run_dir)

    def wait(self, timeout_s: float | None = None) -> str | None:
        """Blocks until the deployment cannot go on (returns the name of the child it lost: the
        scheduler, or one that kept crashing) or timeout_s passes (returns None). Workers, the
        store and the door that exit meanwhile are restarted (``restarts``).

        Plain blocking code (no event loop), in short waits, so a signal handler may raise out
        of it safely.
        """
        supervisor = self._supervisor
        if supervisor is None:
            raise RuntimeError("the deployment has not been started")
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            left = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
            if left <= 0:
                return None
            if supervisor.gave_up.wait(left):
                return supervisor.gave_up_on

    # ------------------------------------------------------------------ start

    def _make_layout(self) -> Layout:
        """Checks what can be checked before any child starts (StartRefused, one line), then
        decides every address, port and device."""
        cfg = self.config
        check_model(cfg.model)
        check_tls(cfg)
        devices = place(cfg)
        names = [
            *(() if cfg.kvstore else ("kvstore",)),
            "scheduler",
            *(f"worker-{i}" for i in range(cfg.workers)),
        ]
        metrics = self._metrics_ports(names)
        port, http_port = cfg.port, cfg.http_port
        spare = free_ports(2, cfg.host)
        port = port or spare[0]
        if http_port == 0:
            http_port = spare[1]
        wanted = {"the public API": cfg.port} if cfg.port else {}
        if cfg.http_port:
            wanted["the HTTP API"] = cfg.http_port
        if cfg.metrics_port:
            wanted |= {f"{name} metrics": p for name, p in metrics.items()}
        check_ports(cfg.host, wanted)
        if cfg.kvstore:
            check_store(cfg.kvstore, cfg.start_timeout_s)
        run_dir = Path(tempfile.mkdtemp(prefix="fastswitch-"))
        layout = Layout(
            run_dir=run_dir,
            deployment_id=uuid.uuid4().hex[:12],
            port=port,
            metrics_ports=metrics,
            host=cfg.host,
            kvstore=cfg.kvstore,
            devices=devices,
            http_port=http_port,
            tls=cfg.tls_cert is not None,
        )
        sockets = (layout.unix(f"worker-{cfg.workers - 1}"), layout.scheduler_internal)
        longest = max(map(len, sockets)) - len("unix://")
        if longest > _MAX_UNIX_PATH:
            shutil.rmtree(run_dir)
            raise StartRefused(
                f"runtime dir {run_dir} is too long for Unix sockets; set TMPDIR to a shorter path"
            )
        if cfg.api_keys is not None:
            self._keys.write(run_dir)
        return layout

    def _metrics_ports(self, names: list[str]) -> dict[str, int]:
        """Free ports, or from the base: scheduler B, store B+1, worker i B+2+i."""
        base = self.config.metrics_port
        if not base:
            return dict(zip(names, free_ports(len(names), self.config.host), strict=True))
        fixed = {"scheduler": base, "kvstore": base + 1}
        return {n: fixed.get(n) or base + 2 + int(n.removeprefix("worker-")) for n in names}

    async def _bring_up(self) -> None:
        cfg = self.config
        layout = self._require_layout()
        deadline = time.monotonic() + cfg.start_timeout_s
        specs = child_specs(cfg, layout)
        if specs[0].service == "kvstore":
            await self._ready([self._spawn(specs.pop(0))], deadline)
        await self._ready([self._spawn(s) for s in specs], deadline)
        await self._guarded(self._wait_joined(cfg.workers, deadline))

    def _spawn(self, spec: ChildSpec) -> Child:
        child = self._spawn_one(spec)
        with self._lock:
            self._children.append(child)
        return child

    def _spawn_one(self, spec: ChildSpec) -> Child:
        log_dir = self.log_dir
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
        log_path = None if log_dir is None else log_dir / f"{spec.name}.log"
        return spawn(spec, self._command, log_path, self.deployment_id, self.run_dir)

    async def _ready(self, children: list[Child], deadline: float) -> None:
        """Waits until every child in `children` answers SERVING on gRPC health."""

        async def healthy(child: Child) -> None:
            target = child.spec.health_target
            try:
                ca = child.spec.health_ca
                if target.startswith(("http://", "https://")):
                    await wait_http_ok(target, timeout_s=_remaining(deadline), ca=ca)
                else:
                    await wait_healthy(target, timeout_s=_remaining(deadline), tls_ca=ca)
            except TimeoutError as err:
                raise DeploymentError(f"{child.name}: {err}\n{child.log_tail()}") from None

        async def all_healthy() -> None:
            tasks = [asyncio.ensure_future(healthy(c)) for c in children]
            try:
                await asyncio.gather(*tasks)  # the first failure wins...
            finally:  # ...and the other waits go with it
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

        await self._guarded(all_healthy())

    async def _wait_joined(self, n: int, deadline: float) -> None:
        """Polls the scheduler's stats until n workers joined (bounded by the start deadline)."""
        joined = 0
        ca = self.config.trusted_ca
        api = AsyncClient(self.address, timeout_s=5.0, api_key=self.admin_key, tls_ca=ca)
        async with api:
            while True:
                try:
                    joined = len((await api.stats(timeout_s=_poll_timeout(deadline))).workers)
                except (Unavailable, DeadlineExceeded):
                    joined = 0
                if joined >= n:
                    return
                if _remaining(deadline) <= 0.05:
                    break
                await asyncio.sleep(0.05)
        raise DeploymentError(
            f"only {joined} of {n} workers joined the scheduler within "
            f"{self.config.start_timeout_s:g}s\n" + self._tails(["scheduler"])
        )

    async def _guarded(self, work: Awaitable[T]) -> T:
        """Runs `work` while watching every started child; one that exits fails the start."""
        main = asyncio.ensure_future(work)
        watchers = {asyncio.ensure_future(c.wait_exit()): c for c in self._children}
        try:
            await asyncio.wait([main, *watchers], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (main, *watchers):
                task.cancel()
            await asyncio.gather(main, *watchers, return_exceptions=True)
        dead = [c for t, c in watchers.items() if t.done() and not t.cancelled()]
        if dead:
            child = dead[0]
            raise DeploymentError(
                f"{child.name} exited with code {child.proc.returncode} during start\n"
                + child.log_tail()
            )
        return main.result()

    def _tails(self, names: Sequence[str]) -> str:
        return "\n".join(c.log_tail() for c in self._children if c.name in names)

    def _require_layout(self) -> Layout:
        if self._layout is None:
            raise RuntimeError("the deployment has not been started")
        return self._layout


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _poll_timeout(deadline: float) -> float:
    """Deadline of one poll: at most 2 s, never zero (the start deadline may just have passed;
    the caller's loop reports that after the poll)."""
    return min(2.0, max(0.05, _remaining(deadline)))


def _log_line(line: str) -> None:
    log.warning("%s", line)
