"""Starts a whole FastSwitch deployment on this machine: a KV store, N workers and the scheduler.

Each service is a child process ``python -m fastswitch serve SERVICE ...flags``::

    runtime dir (private, removed on stop)       listens on
    ├── kvstore.sock  kvstore.log                 unix://RUNDIR/kvstore.sock
    ├── worker-0.sock worker-0.log  ...           unix://RUNDIR/worker-i.sock
    └── scheduler.log                             127.0.0.1:PORT   (the public API)

Start order: KV store (wait healthy) -> scheduler and workers (wait healthy) -> every worker joined
(the scheduler's GetStats lists N workers). A child that exits during start fails the start at
once with the tail of its log. Stop order: scheduler, workers, KV store (which removes its shared
memory arena), each SIGTERM then SIGKILL after ``stop_timeout_s``; every child is reaped.

Children run in their own process group, so a terminal's Ctrl-C reaches only the launcher, which
then stops them in order.
"""

from __future__ import annotations

import asyncio
import logging
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from client import AsyncClient, DeadlineExceeded, Unavailable
from servekit.names import LOG_LEVELS, MODES, POLICIES
from servekit.service import wait_healthy

log = logging.getLogger(__name__)

T = TypeVar("T")

SERVICES = ("scheduler", "worker", "kvstore")

#: Builds a child's command line from (service, flags); tests inject dummies.
CommandBuilder = Callable[[str, Sequence[str]], list[str]]

_LOG_TAIL_LINES = 30
_MAX_UNIX_PATH = 107


class DeploymentError(RuntimeError):
    """A deployment failed to start (the message carries the failing child's log tail)."""


def serve_command(service: str, flags: Sequence[str]) -> list[str]:
    """The real command line of one service."""
    return [sys.executable, "-m", "fastswitch", "serve", service, *flags]


@dataclass(frozen=True, slots=True)
class DeploymentConfig:
    """What to start; validated once on construction."""

    model: str = "tiny"
    workers: int = 1
    port: int = 50051
    host_kv_gib: float = 0.25
    device_kv_blocks: int | None = None
    policy: str = "vtc"
    mode: str = "fastswitch"
    log_level: str = "info"
    extra_scheduler_args: tuple[str, ...] = ()
    extra_worker_args: tuple[str, ...] = ()
    verbose: bool = False
    start_timeout_s: float = 120.0
    stop_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model must not be empty")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.host_kv_gib <= 0:
            raise ValueError(f"host_kv_gib must be > 0, got {self.host_kv_gib}")
        if self.device_kv_blocks is not None and self.device_kv_blocks <= 0:
            raise ValueError(f"device_kv_blocks must be > 0, got {self.device_kv_blocks}")
        for name, value, allowed in (
            ("policy", self.policy, POLICIES),
            ("mode", self.mode, MODES),
            ("log_level", self.log_level, LOG_LEVELS),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
        if self.start_timeout_s <= 0 or self.stop_timeout_s <= 0:
            raise ValueError("start_timeout_s and stop_timeout_s must be > 0")


@dataclass(frozen=True, slots=True)
class Layout:
    """Where everything listens, decided before any child starts."""

    run_dir: Path
    deployment_id: str
    port: int
    metrics_ports: Mapping[str, int]

    def unix(self, name: str) -> str:
        return f"unix://{self.run_dir / f'{name}.sock'}"

    @property
    def scheduler_address(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """One service process: its name (log file, metrics key), service kind, flags, health target."""

    name: str
    service: str
    flags: tuple[str, ...]
    health_target: str


def child_specs(cfg: DeploymentConfig, layout: Layout) -> list[ChildSpec]:
    """The flags of every child, in start order (kvstore, scheduler, workers). The one place that
    maps a deployment to the services' command-line flags."""
    kv = layout.unix("kvstore")
    common = ("--deployment-id", layout.deployment_id, "--log-level", cfg.log_level)
    specs = [
        ChildSpec(
            "kvstore",
            "kvstore",
            (
                *("--listen", kv),
                *("--metrics-port", str(layout.metrics_ports["kvstore"])),
                *("--host-kv-gib", f"{cfg.host_kv_gib:g}"),
                *common,
            ),
            kv,
        ),
        ChildSpec(
            "scheduler",
            "scheduler",
            (
                *("--listen", layout.scheduler_address),
                *("--metrics-port", str(layout.metrics_ports["scheduler"])),
                *("--kvstore", kv),
                *("--model", cfg.model),
                *("--policy", cfg.policy),
                *("--mode", cfg.mode),
                *common,
                *cfg.extra_scheduler_args,
            ),
            layout.scheduler_address,
        ),
    ]
    for i in range(cfg.workers):
        name = f"worker-{i}"
        blocks = (
            ()
            if cfg.device_kv_blocks is None
            else ("--device-kv-blocks", str(cfg.device_kv_blocks))
        )
        specs.append(
            ChildSpec(
                name,
                "worker",
                (
                    *("--listen", layout.unix(name)),
                    *("--metrics-port", str(layout.metrics_ports[name])),
                    *("--scheduler", layout.scheduler_address),
                    *("--kvstore", kv),
                    *("--model", cfg.model),
                    *("--worker-id", name),
                    *("--mode", cfg.mode),
                    *blocks,
                    *common,
                    *cfg.extra_worker_args,
                ),
                layout.unix(name),
            )
        )
    return specs


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n distinct TCP ports free right now (bound to port 0 together, then closed)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on host:port now (SO_REUSEADDR, as gRPC binds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """One TCP port free right now."""
    return free_ports(1, host)[0]


@dataclass(slots=True)
class _Child:
    spec: ChildSpec
    proc: subprocess.Popen[bytes]
    log_path: Path | None
    pidfd: int | None = field(default=None)

    def alive(self) -> bool:
        return self.proc.poll() is None

    async def wait_exit(self) -> int:
        """Returns the exit code once the process exits (pidfd readiness; a poll without one)."""
        if self.pidfd is None:
            while self.proc.poll() is None:
                await asyncio.sleep(0.1)
            return self.proc.wait()
        loop = asyncio.get_running_loop()
        exited: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not exited.done():
                exited.set_result(None)

        loop.add_reader(self.pidfd, readable)
        try:
            if self.proc.poll() is None:
                await exited
        finally:
            loop.remove_reader(self.pidfd)
        return self.proc.wait()

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        if self.log_path is None:
            return f"(output of {self.spec.name} went to stderr)"
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return f"(no log for {self.spec.name})"
        tail = "\n".join(text.splitlines()[-lines:])
        return f"--- last lines of {self.spec.name}'s log ---\n{tail or '(empty)'}"

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


class Deployment:
    """A KV store, N workers and the scheduler, as child processes of this one.

    ``with Deployment(workers=2, port=0) as d: AsyncClient(d.address) ...`` -- or ``start()`` and
    ``stop()``. ``stop()`` is idempotent and also runs when ``start()`` fails; afterwards no child
    remains (``alive_pids()`` is empty) and the runtime directory is gone. ``command`` builds each
    child's command line (tests inject dummies).
    """

    def __init__(
        self,
        model: str = "tiny",
        workers: int = 1,
        port: int = 50051,
        host_kv_gib: float = 0.25,
        device_kv_blocks: int | None = None,
        policy: str = "vtc",
        mode: str = "fastswitch",
        log_level: str = "info",
        extra_scheduler_args: Sequence[str] = (),
        extra_worker_args: Sequence[str] = (),
        verbose: bool = False,
        start_timeout_s: float = 120.0,
        *,
        stop_timeout_s: float = 10.0,
        command: CommandBuilder = serve_command,
    ) -> None:
        self.config = DeploymentConfig(
            model=model,
            workers=workers,
            port=port,
            host_kv_gib=host_kv_gib,
            device_kv_blocks=device_kv_blocks,
            policy=policy,
            mode=mode,
            log_level=log_level,
            extra_scheduler_args=tuple(extra_scheduler_args),
            extra_worker_args=tuple(extra_worker_args),
            verbose=verbose,
            start_timeout_s=start_timeout_s,
            stop_timeout_s=stop_timeout_s,
        )
        self._command = command
        self._layout: Layout | None = None
        self._children: list[_Child] = []
        self._started = False
        self._stopped = False

    # ------------------------------------------------------------------ public

    @property
    def address(self) -> str:
        """The scheduler's public address, ``127.0.0.1:PORT``."""
        return self._require_layout().scheduler_address

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
        """The KV store's (Unix socket) address, for its stats."""
        return self._require_layout().unix("kvstore")

    def pid_of(self, name: str) -> int | None:
        """Pid of the child `name` (kvstore, scheduler, worker-N) while it runs."""
        return next((c.proc.pid for c in self._children if c.spec.name == name and c.alive()), None)

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
            _run_sync(self._bring_up)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stops the scheduler, then the workers, then the KV store; removes the runtime dir."""
        if self._stopped:
            return
        self._stopped = True
        by_service = {s: [c for c in self._children if c.spec.service == s] for s in SERVICES}
        for service in SERVICES:  # scheduler, worker, kvstore
            self._terminate(by_service[service])
        for child in self._children:
            child.close()
        if self._layout is not None:
            self._sweep_shared_memory(self._layout.deployment_id)
        if self._layout is not None and self._layout.run_dir.exists():
            shutil.rmtree(self._layout.run_dir)

    @staticmethod
    def _sweep_shared_memory(deployment_id: str) -> None:
        """Removes this deployment's shared-memory files that a killed child could not remove
        (a clean shutdown leaves none; the deployment id is ours alone)."""
        for path in Path("/dev/shm").glob(f"fastswitch-{deployment_id}-*"):
            log.warning("removing a shared-memory file left by a killed child: %s", path.name)
            path.unlink(missing_ok=True)

    def alive_pids(self) -> list[int]:
        """Pids of the children still running (empty after stop())."""
        return [c.proc.pid for c in self._children if c.alive()]

    def wait(self, timeout_s: float | None = None) -> str | None:
        """Blocks until a child exits (returns its name) or timeout_s passes (returns None).

        Plain blocking code (no event loop), so a signal handler may raise out of it safely.
        """
        if not self._children:
            raise RuntimeError("the deployment has no children to wait for")
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with selectors.DefaultSelector() as sel:
            for child in self._children:
                if child.pidfd is not None:
                    sel.register(child.pidfd, selectors.EVENT_READ)
            polled = any(c.pidfd is None for c in self._children)
            while True:
                gone = next((c for c in self._children if not c.alive()), None)
                if gone is not None:
                    return gone.spec.name
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                if polled:  # a child without a pidfd: look again soon
                    left = 0.1 if left is None else min(left, 0.1)
                if sel.get_map():
                    sel.select(timeout=left)
                else:
                    time.sleep(left if left is not None else 0.1)

    # ------------------------------------------------------------------ start

    def _make_layout(self) -> Layout:
        cfg = self.config
        names = ["kvstore", "scheduler", *(f"worker-{i}" for i in range(cfg.workers))]
        ports = free_ports(len(names) + (cfg.port == 0))
        port = ports.pop() if cfg.port == 0 else cfg.port
        if cfg.port != 0 and not port_is_free(port):
            raise DeploymentError(
                f"port {port} on 127.0.0.1 is in use; pick another (--port 0: any)"
            )
        run_dir = Path(tempfile.mkdtemp(prefix="fastswitch-"))
        layout = Layout(
            run_dir=run_dir,
            deployment_id=uuid.uuid4().hex[:12],
            port=port,
            metrics_ports=dict(zip(names, ports, strict=True)),
        )
        longest = len(layout.unix(f"worker-{cfg.workers - 1}")) - len("unix://")
        if longest > _MAX_UNIX_PATH:
            shutil.rmtree(run_dir)
            raise DeploymentError(
                f"runtime dir {run_dir} is too long for Unix sockets; set TMPDIR to a shorter path"
            )
        return layout

    async def _bring_up(self) -> None:
        cfg = self.config
        layout = self._require_layout()
        deadline = time.monotonic() + cfg.start_timeout_s
        kv, scheduler, *workers = child_specs(cfg, layout)
        await self._ready([self._spawn(kv)], deadline)
        await self._ready([self._spawn(s) for s in (scheduler, *workers)], deadline)
        await self._guarded(self._wait_joined(cfg.workers, deadline))

    def _spawn(self, spec: ChildSpec) -> _Child:
        run_dir = self._require_layout().run_dir
        log_path = None if self.config.verbose else run_dir / f"{spec.name}.log"
        cmd = self._command(spec.service, spec.flags)
        try:
            if log_path is None:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=2, process_group=0)
            else:
                with open(log_path, "wb") as log:
                    proc = subprocess.Popen(
                        cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, process_group=0
                    )
        except OSError as err:
            raise DeploymentError(f"cannot start {spec.name} ({cmd[0]}): {err}") from err
        child = _Child(spec, proc, log_path, _pidfd(proc.pid))
        self._children.append(child)
        return child

    async def _ready(self, children: list[_Child], deadline: float) -> None:
        """Waits until every child in `children` answers SERVING on gRPC health."""

        async def healthy(child: _Child) -> None:
            try:
                await wait_healthy(child.spec.health_target, timeout_s=_remaining(deadline))
            except TimeoutError as err:
                raise DeploymentError(f"{child.spec.name}: {err}\n{child.log_tail()}") from None

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
        async with AsyncClient(self.address, timeout_s=5.0) as api:
            while True:
                try:
                    joined = len(
                        (await api.stats(timeout_s=_poll_timeout(deadline))).workers
                    )
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
                f"{child.spec.name} exited with code {child.proc.returncode} during start\n"
                + child.log_tail()
            )
        return main.result()

    def _tails(self, names: Sequence[str]) -> str:
        return "\n".join(c.log_tail() for c in self._children if c.spec.name in names)

    # ------------------------------------------------------------------ stop

    def _terminate(self, children: list[_Child]) -> None:
        """SIGTERM all of `children`, wait up to stop_timeout_s, then SIGKILL their groups; reap."""
        for child in children:
            if child.alive():
                _signal(child.proc.pid, signal.SIGTERM, group=False)
        deadline = time.monotonic() + self.config.stop_timeout_s
        for child in children:
            try:
                child.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal(child.proc.pid, signal.SIGKILL, group=True)
                child.proc.wait()

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


def _pidfd(pid: int) -> int | None:
    open_pidfd = getattr(os, "pidfd_open", None)
    if open_pidfd is None:
        return None
    try:
        return int(open_pidfd(pid))
    except OSError:  # kernel without pidfd (Linux < 5.3): wait_exit falls back to polling
        return None


def _signal(pid: int, sig: signal.Signals, *, group: bool) -> None:
    try:
        if group:
            os.killpg(pid, sig)  # the child leads its own process group (process_group=0)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass  # already gone; wait() reaps it


def _run_sync(make: Callable[[], Awaitable[T]]) -> T:
    """Runs a coroutine to completion from sync code, on a fresh loop in a helper thread when this
    thread already runs one (e.g. a Deployment used inside an async test)."""

    async def main() -> T:
        return await make()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastswitch-launcher") as pool:
        return pool.submit(asyncio.run, main()).result()


__all__ = [
    "LOG_LEVELS",
    "MODES",
    "POLICIES",
    "SERVICES",
    "ChildSpec",
    "CommandBuilder",
    "Deployment",
    "DeploymentConfig",
    "DeploymentError",
    "Layout",
    "child_specs",
    "free_port",
    "free_ports",
    "port_is_free",
    "serve_command",
]
