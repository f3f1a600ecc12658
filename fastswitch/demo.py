"""The workload and report of ``fastswitch demo``: a few tenants with different prompt lengths send
concurrent requests through the SDK; then one short conversation shows KV reuse across turns.

The deployment itself is the CLI's job; everything here talks to a scheduler address.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from client import AsyncClient, FastSwitchError, GenerationResult, Stats, Unimplemented

_TEXT = (
    "the quick brown fox jumps over a lazy dog while seven tired engineers argue about "
    "schedulers caches and queues until the coffee runs out and the benchmark finally ends"
)


@dataclass(frozen=True, slots=True)
class DemoConfig:
    """The workload: `requests` spread round-robin over `tenants`, at most `concurrency` at once."""

    tenants: int = 3
    requests: int = 24
    max_tokens: int = 32
    concurrency: int = 8
    chat_turns: int = 2
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        for name in ("tenants", "requests", "max_tokens", "concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.chat_turns < 0:
            raise ValueError(f"chat_turns must be >= 0, got {self.chat_turns}")

    def tenant(self, i: int) -> str:
        return f"tenant-{chr(ord('a') + i)}" if i < 26 else f"tenant-{i}"

    def prompt_words(self, tenant_index: int) -> int:
        """Tenant i's prompts are 8, 24, 40, ... words long: different shares of prefill work."""
        return 8 + 16 * tenant_index


@dataclass(frozen=True, slots=True)
class TenantOutcome:
    tenant: str
    result: GenerationResult


@dataclass(frozen=True, slots=True)
class DemoReport:
    config: DemoConfig
    wall_s: float
    outcomes: tuple[TenantOutcome, ...]
    failures: tuple[str, ...]
    stats: Stats
    chat: tuple[GenerationResult, ...]
    chat_skipped: str | None  # why the conversation did not run (the server does not serve Chat)


def prompt(words: int, salt: int) -> str:
    """A deterministic prompt of `words` words; `salt` varies where it starts."""
    vocab = _TEXT.split()
    return " ".join(vocab[(salt + k) % len(vocab)] for k in range(words))


async def run_workload(address: str, cfg: DemoConfig) -> DemoReport:
    """Runs the demo workload against the scheduler at `address`."""
    gate = asyncio.Semaphore(cfg.concurrency)
    outcomes: list[TenantOutcome] = []
    failures: list[str] = []

    async def one(api: AsyncClient, k: int) -> None:
        t = k % cfg.tenants
        async with gate:
            try:
                result = await api.generate(
                    prompt(cfg.prompt_words(t), salt=k),
                    max_tokens=cfg.max_tokens,
                    tenant=cfg.tenant(t),
                    ignore_eos=True,
                    seed=k,
                )
            except FastSwitchError as err:
                failures.append(f"{cfg.tenant(t)} request {k}: {err}")
                return
        outcomes.append(TenantOutcome(cfg.tenant(t), result))

    async with AsyncClient(address, timeout_s=cfg.timeout_s) as api:
        t0 = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            for k in range(cfg.requests):
                tg.create_task(one(api, k))
        wall_s = time.perf_counter() - t0
        chat: list[GenerationResult] = []
        chat_skipped = None
        try:
            await _conversation(api, cfg, chat)
        except Unimplemented as err:
            chat_skipped = err.details
        stats = await api.stats()
    return DemoReport(
        cfg, wall_s, tuple(outcomes), tuple(failures), stats, tuple(chat), chat_skipped
    )


async def _conversation(api: AsyncClient, cfg: DemoConfig, turns: list[GenerationResult]) -> None:
    """A short conversation of tenant 0; later turns should reuse the earlier turns' KV."""
    if not cfg.chat_turns:
        return
    async with api.chat(tenant=cfg.tenant(0), system="You are a terse assistant.") as conv:
        for turn in range(cfg.chat_turns):
            reply = await conv.send(prompt(12, salt=100 + turn), max_tokens=8, ignore_eos=True)
            turns.append(reply)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1e3:8.1f}"


def _latency_row(label: str, values: Sequence[float]) -> str:
    cells = "".join(f"{_ms(percentile(values, q)):>10}" for q in (50, 95, 99))
    return f"  {label:<22}{cells}"


def format_report(report: DemoReport) -> str:
    """A readable, plain-text report of a demo run."""
    cfg, stats = report.config, report.stats
    results = [o.result for o in report.outcomes]
    out_tokens = sum(len(r.token_ids) for r in results)
    lines = [
        f"FastSwitch demo: {cfg.requests} requests from {cfg.tenants} tenants, "
        f"{cfg.max_tokens} tokens each, at most {cfg.concurrency} at once "
        f"(policy {stats.policy or '?'}, mode {stats.mode or '?'}, {len(stats.workers)} workers)",
        f"  wall {report.wall_s:.2f} s, {out_tokens} output tokens, "
        f"{out_tokens / report.wall_s if report.wall_s > 0 else 0.0:.1f} tokens/s, "
        f"{len(report.failures)} failed",
        "",
        f"  {'latency (ms)':<22}{'P50':>10}{'P95':>10}{'P99':>10}",
        _latency_row("TTFT (client)", [r.client_ttft_s for r in results if r.client_ttft_s]),
        _latency_row("TBT (client)", [g for r in results for g in r.client_tbt_s]),
        _latency_row("TTFT (server)", [r.metrics.ttft_s for r in results]),
        _latency_row("TBT (server)", [g for r in results for g in r.metrics.tbt_s]),
        _latency_row("queue (server)", [r.metrics.queue_s for r in results]),
        "",
        f"  {'tenant':<12}{'requests':>9}{'prompt tok':>12}{'output tok':>12}"
        f"{'TTFT P50 ms':>13}{'VTC counter':>13}",
    ]
    for i in range(cfg.tenants):
        name = cfg.tenant(i)
        mine = [o.result for o in report.outcomes if o.tenant == name]
        served = stats.tenant(name)
        ttft = percentile([r.client_ttft_s for r in mine if r.client_ttft_s], 50)
        lines.append(
            f"  {name:<12}{len(mine):>9}{sum(r.metrics.prompt_tokens for r in mine):>12}"
            f"{sum(len(r.token_ids) for r in mine):>12}{_ms(ttft):>13}"
            f"{f'{served.virtual_counter:.1f}' if served else '-':>13}"
        )
    lines += [
        "",
        f"  scheduler: {stats.finished} finished, {stats.preemptions} preemptions, "
        f"{stats.swap_outs} swap-outs, {stats.swap_ins} swap-ins, {stats.recomputes} recomputes, "
        f"{_mib(stats.swap_out_bytes)} out / {_mib(stats.swap_in_bytes)} in, "
        f"{stats.reuse_hit_tokens} reused prompt tokens",
    ]
    for w in stats.workers:
        lines.append(
            f"  {w.worker_id}: {w.device}, {w.steps} steps, "
            f"mean step {w.mean_step_s * 1e3:.1f} ms, {w.free_blocks}/{w.num_blocks} blocks free"
        )
    for turn, r in enumerate(report.chat, start=1):
        lines.append(
            f"  conversation turn {turn}: {r.metrics.prompt_tokens} prompt tokens, "
            f"{r.metrics.cached_prompt_tokens} from retained KV, "
            f"TTFT {_ms(r.client_ttft_s).strip()} ms"
        )
    if report.chat_skipped is not None:
        lines.append(f"  conversation: skipped ({report.chat_skipped})")
    lines += [f"  failed: {f}" for f in report.failures[:5]]
    return "\n".join(lines)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"
