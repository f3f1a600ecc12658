"""scheduler_svc process: config from flags and environment, life cycle, ordered shutdown."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from proto import worker_pb2_grpc as wk_grpc
from scheduler_svc.auth import ApiKeyInterceptor
from scheduler_svc.config import CoreConfig
from scheduler_svc.core import SchedulerCore
from scheduler_svc.fetch_cost import HOST_FETCH
from scheduler_svc.frontend import Frontend
from scheduler_svc.handlers import add_fastswitch_servicer
from scheduler_svc.host_agent import HostAgent
from scheduler_svc.metrics import SchedulerMetrics
from scheduler_svc.policy import make_policy
from scheduler_svc.servicer import REJECT_REASONS, FastSwitchServicer, StepLinkServicer
from scheduler_svc.swaps import HOST_WRITE
from scheduler_svc.tenancy import PriorityClasses
from servekit import heap, memtrace
from servekit.config import add_common_flags, env_default, parse_weights
from servekit.keys import KeyRing
from servekit.labels import DEFAULT_MAX_TENANTS
from servekit.logs import setup_logging
from servekit.modelspec import load_model_spec
from servekit.names import MODES, POLICIES, PREEMPTIONS, Preemption, mode_settings
from servekit.planes import (
    OPEN_PLANE,
    InternalPlane,
    add_internal_flags,
    default_internal_address,
    plane_from_args,
)
from servekit.service import GrpcService, run
from servekit.tls import TlsPair, tls_pair
from servekit.tokenizer import load_tokenizer
from servekit.validation import PROMPT_BYTES_PER_TOKEN, validate_tenant

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    listen: str
    metrics_port: int
    metrics_host: str
    log_level: str
    deployment_id: str
    kvstore: str
    model: str
    policy: str
    mode: str
    core: CoreConfig
    max_tokens_limit: int
    max_prompt_bytes: int
    tenants: tuple[tuple[str, float], ...]
    host_lease_s: float
    retain_generate_ttl_s: float | None
    strict_tenants: bool
    w_prompt: float
    w_output: float
    metrics_max_tenants: int = DEFAULT_MAX_TENANTS
    api_keys: tuple[str, ...] = ()  # key files (merged); none: $FASTSWITCH_API_KEYS_FILE/_TEXT
    internal_listen: str = ""  # the worker plane (StepLink); "" -> default_internal_address
    plane: InternalPlane = OPEN_PLANE
    tls: TlsPair | None = None  # server-side TLS of the public --listen (None: plaintext)
    malloc_trim_s: float = 30.0  # servekit/heap.py; 0: never

    def __post_init__(self) -> None:
        if not self.internal_listen:
            address = default_internal_address(self.deployment_id, "scheduler")
            object.__setattr__(self, "internal_listen", address)
        if self.tls is not None and self.listen.startswith("unix:"):
            raise ValueError(f"--tls-cert needs a TCP --listen, got {self.listen!r}")
        if self.internal_listen == self.listen:
            raise ValueError(f"--internal-listen must differ from --listen, got {self.listen!r}")
        self.plane.check_listener(self.internal_listen, "--internal-listen")
        if self.policy not in POLICIES:
            raise ValueError(f"--policy must be one of {POLICIES}, got {self.policy!r}")
        mode_settings(self.mode)  # ValueError for an unknown mode
        if self.max_tokens_limit <= 0:
            raise ValueError(f"--max-tokens-limit must be > 0, got {self.max_tokens_limit}")
        if self.max_prompt_bytes < 0:
            raise ValueError(f"--max-prompt-bytes must be >= 0, got {self.max_prompt_bytes}")
        if self.metrics_max_tenants < 0:
            raise ValueError(f"--metrics-max-tenants must be >= 0, got {self.metrics_max_tenants}")
        if not self.malloc_trim_s >= 0:  # NaN too
            raise ValueError(f"--malloc-trim-s must be >= 0, got {self.malloc_trim_s}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fastswitch serve scheduler",
        description="The central scheduler: public API, fairness, step plans for every worker.",
    )
    add_common_flags(p, listen="127.0.0.1:50051", metrics_port=9451)
    p.add_argument(
        "--internal-listen",
        default=env_default("--internal-listen", ""),
        help="the worker plane (StepLink): workers dial it, never the public --listen; default "
        "unix:///tmp/fastswitch-<deployment-id>-scheduler.sock; a TCP address needs the "
        "deployment secret (docs/security.md)",
    )
    add_internal_flags(p)
    g = p.add_argument_group("TLS of the public API (docs/security.md)")
    g.add_argument(
        "--tls-cert",
        default=env_default("--tls-cert", ""),
        metavar="PEM",
        help="server certificate (chain) of the public --listen: TLS, not mutual; with --tls-key",
    )
    g.add_argument(
        "--tls-key",
        default=env_default("--tls-key", ""),
        metavar="PEM",
        help="the private key of --tls-cert",
    )
    p.add_argument("--kvstore", default=env_default("--kvstore", ""), help="KV store address")
    p.add_argument("--model", default=env_default("--model", "tiny"), help="tiny or a HF dir")
    p.add_argument("--policy", default=env_default("--policy", "vtc"), choices=POLICIES)
    p.add_argument(
        "--mode",
        default=env_default("--mode", "fastswitch"),
        choices=MODES,
        help="fastswitch: swaps to the host arena, KV reuse and retention; vllm-v1: device "
        "prefix cache, preemption by recompute, no host tier; vllm-baseline: swaps, no reuse, "
        "no cache (the defaults of --preemption, --device-prefix-cache, --no-kv-reuse, "
        "--no-retain; default %(default)s)",
    )
    p.add_argument(
        "--max-batched-tokens",
        type=int,
        default=env_default("--max-batched-tokens", 512),
        help="token budget of one step (decodes + prefill chunks)",
    )
    p.add_argument("--max-num-seqs", type=int, default=env_default("--max-num-seqs", 64))
    p.add_argument(
        "--max-prefill-chunk",
        type=int,
        default=env_default("--max-prefill-chunk", 512),
        help="largest prefill chunk of one request in one step",
    )
    p.add_argument("--growth-allowance", type=int, default=env_default("--growth-allowance", 4))
    p.add_argument("--max-waiting", type=int, default=env_default("--max-waiting", 10_000))
    p.add_argument("--max-tokens-limit", type=int, default=env_default("--max-tokens-limit", 4096))
    p.add_argument(
        "--max-prompt-bytes",
        type=int,
        default=env_default("--max-prompt-bytes", 0),
        help="longest text prompt, chat message or system prompt in UTF-8 bytes, refused before "
        f"tokenising (0: the model's max_model_len x {PROMPT_BYTES_PER_TOKEN})",
    )
    p.add_argument(
        "--tenant-idle-s",
        type=float,
        default=env_default("--tenant-idle-s", 600.0),
        help="a tenant with no waiting or running request for this long leaves the live table "
        "and GetStats (its fairness counter is kept; %(default)s)",
    )
    p.add_argument(
        "--max-tenants",
        type=int,
        default=env_default("--max-tenants", 1024),
        help="most tenants in the live table; a request of a new one over it is refused with "
        "RESOURCE_EXHAUSTED when no idle tenant can make room (%(default)s)",
    )
    p.add_argument(
        "--tenants",
        default=env_default("--tenants", ""),
        help="NAME=WEIGHT,... fairness weights (others weigh 1)",
    )
    p.add_argument(
        "--strict-tenants",
        action="store_true",
        help="reject tenants not named in --tenants (INVALID_ARGUMENT)",
    )
    p.add_argument(
        "--shared-prefix-tenants",
        action="append",
        default=[],
        metavar="A,B,...",
        help="a group of tenants that may share cached KV (a public system prompt): their "
        "blocks hash alike, so each hits, and can time, the others' cache; repeat for more "
        "groups (default: none, every tenant's cache is its own)",
    )
    p.add_argument(
        "--metrics-max-tenants",
        type=int,
        default=env_default("--metrics-max-tenants", DEFAULT_MAX_TENANTS),
        help="distinct tenant label values in /metrics; later tenants are reported as "
        'tenant="_other" (tenants named in --tenants always have their own; %(default)s)',
    )
    p.add_argument(
        "--api-keys",
        action="append",
        default=None,
        metavar="FILE",
        help="API keys of the public API: lines 'KEY TENANT [weight=W] [priority=P] "
        "[role=tenant|admin|service]' or a JSON object (docs/security.md); repeatable, the files "
        "are merged. Default: $FASTSWITCH_API_KEYS_FILE, else the text of "
        "$FASTSWITCH_API_KEYS_TEXT, else none: the API is open",
    )
    p.add_argument(
        "--malloc-trim-s",
        type=float,
        default=env_default("--malloc-trim-s", 30.0),
        help="give the C heap's free memory back to the system every this many seconds "
        "(malloc_trim: RSS follows the live heap after a backlog drains; 0: never; %(default)s)",
    )
    p.add_argument("--vtc-prompt-weight", type=float, default=1.0)
    p.add_argument("--vtc-output-weight", type=float, default=2.0)
    g = p.add_argument_group("context switching")
    g.add_argument(
        "--preemption",
        default=env_default("--preemption", None),
        choices=PREEMPTIONS,
        help="how a preempted request leaves the device (swap needs --kvstore; default from "
        "--mode: swap, vllm-v1 recompute)",
    )
    g.add_argument(
        "--no-kv-reuse",
        action="store_true",
        help="swap the whole context every time (no host copy kept after a swap-in)",
    )
    g.add_argument(
        "--min-swap-tokens",
        type=int,
        default=env_default("--min-swap-tokens", 32),
        help="contexts shorter than this are recomputed instead of swapped",
    )
    g.add_argument(
        "--priority-update-interval",
        type=int,
        default=env_default("--priority-update-interval", 4),
        help="re-rank and preempt every N iterations of a worker",
    )
    g.add_argument(
        "--preempt-margin",
        type=float,
        default=env_default("--preempt-margin", 1024.0),
        help="the preemption quantum Q: a waiting request preempts a running one only when its "
        "tenant's VTC counter is lower by more than Q, and only for a batch slot or blocks it "
        "lacks (0: at every crossing; default %(default)s)",
    )
    g.add_argument(
        "--host-lease-s", type=float, default=60.0, help="lease of host reservations and pins"
    )
    g.add_argument(
        "--retain-generate",
        type=float,
        default=env_default("--retain-generate", None),
        metavar="TTL_S",
        help="also retain plain Generate requests' KV when they finish, for this many seconds "
        "(0: until evicted), so later prompts with the same prefix skip it; default: only "
        "conversation turns are retained",
    )
    g.add_argument(
        "--no-retain",
        action="store_true",
        help="do not retain finished requests' KV for later turns and shared prefixes",
    )
    g.add_argument(
        "--device-prefix-cache",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the device tier: finished requests' full blocks stay cached in the worker's pool, "
        "and a new request on that worker shares its longest cached prefix there, read-only "
        "(default from --mode: on in vllm-v1, else off)",
    )
    g.add_argument(
        "--async-scheduling",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="plan each worker's next step while its current one runs (one plan ahead), so a "
        "worker never waits on the scheduler between steps; outputs are unchanged, and a "
        "request ending on a stop token costs one decode in vain (default from --mode: on in "
        "fastswitch, off in the vLLM baselines)",
    )
    g.add_argument(
        "--locality-max-waits",
        type=int,
        default=8,
        metavar="N",
        help="cache-aware placement over the device tier: a waiting request goes to the worker "
        "holding its longest prefix (near-ties within the fairness margin), waiting for it at "
        "most N times; 0: off (default 8)",
    )
    g.add_argument(
        "--host-fetch",
        choices=HOST_FETCH,
        default=env_default("--host-fetch", "auto"),
        help="a retained prefix found in the host arena is fetched when the workers' measured "
        "copy costs and the store's round trip beat prefilling it (auto), always, or never "
        "(then it is prefilled)",
    )
    g.add_argument(
        "--host-write",
        choices=HOST_WRITE,
        default=env_default("--host-write", "through"),
        help="which of a retained request's blocks are written to the host arena when it "
        "finishes: every full block the host lacks (through), or only those that were hit at "
        "least once, on the device or the host (selective; the rest stays in the device cache "
        "alone); default %(default)s",
    )
    return p


def parse_share_group(text: str) -> tuple[str, ...]:
    """``a,b,c`` -> the tenants of one sharing group (each a valid tenant name)."""
    names = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    for name in names:
        validate_tenant(name)
    return names


def config_from_args(args: argparse.Namespace) -> SchedulerConfig:
    """The config of the parsed flags: each context-switch setting is its flag's, else the
    mode's (``mode_settings``); swaps and retention need a KV store."""
    mode = mode_settings(args.mode)
    swap = bool(args.kvstore) and (args.preemption or mode.preemption) == Preemption.SWAP
    device_cache = args.device_prefix_cache
    return SchedulerConfig(
        listen=args.listen,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        log_level=args.log_level,
        deployment_id=args.deployment_id,
        kvstore=args.kvstore,
        model=args.model,
        policy=args.policy,
        mode=args.mode,
        core=CoreConfig(
            max_batched_tokens=args.max_batched_tokens,
            max_num_seqs=args.max_num_seqs,
            max_prefill_chunk=args.max_prefill_chunk,
            growth_allowance=args.growth_allowance,
            max_waiting=args.max_waiting,
            tenant_idle_s=args.tenant_idle_s,
            max_tenants=args.max_tenants,
            preemption=Preemption.SWAP if swap else Preemption.RECOMPUTE,
            kv_reuse=mode.kv_reuse and not args.no_kv_reuse,
            min_swap_tokens=args.min_swap_tokens,
            priority_update_interval=args.priority_update_interval,
            preempt_margin=args.preempt_margin,
            retain=swap
            and not args.no_kv_reuse
            and not args.no_retain
            and mode.kv_reuse
            and mode.retain,
            device_prefix_cache=mode.device_prefix_cache if device_cache is None else device_cache,
            locality_max_waits=args.locality_max_waits,
            shared_prefix_tenants=tuple(
                parse_share_group(text) for text in args.shared_prefix_tenants
            ),
            host_fetch=args.host_fetch,
            async_scheduling=mode.async_scheduling
            if args.async_scheduling is None
            else args.async_scheduling,
            host_write=args.host_write,
        ),
        host_lease_s=args.host_lease_s,
        retain_generate_ttl_s=None if args.retain_generate is None else float(args.retain_generate),
        max_tokens_limit=args.max_tokens_limit,
        max_prompt_bytes=args.max_prompt_bytes,
        tenants=tuple(parse_weights(args.tenants).items()),
        strict_tenants=args.strict_tenants,
        w_prompt=args.vtc_prompt_weight,
        w_output=args.vtc_output_weight,
        metrics_max_tenants=args.metrics_max_tenants,
        api_keys=tuple(args.api_keys or ()),
        internal_listen=args.internal_listen,
        plane=plane_from_args(args),
        tls=tls_pair(args.tls_cert, args.tls_key),
        malloc_trim_s=args.malloc_trim_s,
    )


def max_message_mb(max_prompt_bytes: int, max_model_len: int) -> int:
    """The largest message the scheduler takes, in MiB: room for the largest valid request (a
    chat turn's message and system prompt at their bound, or a whole id list) and 1 MiB more, at
    least 4. gRPC refuses a larger one (RESOURCE_EXHAUSTED) before anything parses it, so a huge
    prompt cannot stall the event loop while its bytes are decoded."""
    largest = 2 * max_prompt_bytes + 10 * max_model_len
    return max(4, -(-largest // (1 << 20)) + 1)


def tenant_weights(cfg: SchedulerConfig, keys: KeyRing) -> dict[str, float]:
    """The VTC weights: the key file's, then --tenants (which wins for a tenant in both)."""
    return {**keys.weights(), **dict(cfg.tenants)}


async def serve(cfg: SchedulerConfig) -> int:
    spec = load_model_spec(cfg.model)
    tokenizer = load_tokenizer(cfg.model)
    keys = KeyRing.load(cfg.api_keys)
    weights = tenant_weights(cfg, keys)
    policy = make_policy(
        cfg.policy, w_prompt=cfg.w_prompt, w_output=cfg.w_output, tenant_weights=weights
    )
    core = SchedulerCore(
        cfg.core, policy, eos_token_ids=spec.eos_token_ids, model_fingerprint=spec.fingerprint
    )
    frontend = Frontend(
        core,
        tokenizer,
        vocab_size=spec.vocab_size,
        max_model_len=spec.max_model_len,
        max_tokens_limit=cfg.max_tokens_limit,
        tenants={**weights, **dict.fromkeys(keys.tenants() - weights.keys(), 1.0)}
        if cfg.strict_tenants
        else None,
        max_prompt_bytes=cfg.max_prompt_bytes or None,
    )
    frontend.priority_classes = PriorityClasses(keys.priority_classes())
    service = GrpcService(
        "scheduler",
        listen=cfg.listen,
        metrics_port=cfg.metrics_port,
        metrics_host=cfg.metrics_host,
        max_message_mb=max_message_mb(frontend.max_prompt_bytes, spec.max_model_len),
        interceptors=[ApiKeyInterceptor(keys)] if keys.enabled else (),
        credentials=None if cfg.tls is None else cfg.tls.server_credentials(),
    )
    # The worker plane on a listener of its own: the public one cannot route StepLink at all.
    internal = GrpcService(
        "scheduler-internal",
        listen=cfg.internal_listen,
        metrics_port=None,
        interceptors=cfg.plane.server_interceptors(),
        credentials=cfg.plane.server_credentials(cfg.internal_listen),
    )
    metrics = SchedulerMetrics(
        service.registry,
        core,
        model=spec.name,
        max_tenants=cfg.metrics_max_tenants,
        tenants=weights,
        reject_reasons=REJECT_REASONS,
    )
    frontend.retain_generate_ttl_s = cfg.retain_generate_ttl_s
    frontend.on_step = metrics.on_step
    frontend.on_finish = metrics.on_finish
    service.add(
        add_fastswitch_servicer,  # parses its own bytes: malformed ones are INVALID_ARGUMENT
        FastSwitchServicer(frontend, metrics, policy=cfg.policy, mode=cfg.mode),
        "fastswitch.v1.FastSwitch",
    )
    internal.add(
        wk_grpc.add_StepLinkServicer_to_server,
        StepLinkServicer(frontend, model_fingerprint=spec.fingerprint),
        "fastswitch.worker.v1.StepLink",
    )
    agent_task: asyncio.Task[None] | None = None
    if cfg.kvstore:
        agent = HostAgent(
            core,
            cfg.kvstore,
            changed=frontend.notify,
            lease_s=cfg.host_lease_s,
            plane=cfg.plane,
        )
        frontend.on_host_ops = agent.wake
        agent_task = asyncio.create_task(agent.run(), name="host-agent")
    else:
        log.warning("no --kvstore: preemption recomputes (no swaps)")
    if not keys.enabled:
        log.warning(
            "no API keys: the public API is open; any client may act as any tenant "
            "(give --api-keys FILE)",
            extra={"listen": cfg.listen},
        )
    await internal.start()
    try:
        await service.start()
    except BaseException:
        await internal.stop(0)
        raise
    service.install_signal_handlers()
    internal.set_serving(True)
    service.set_serving(True)
    every_s = memtrace.interval_s()  # the memory debug aid, off unless asked for
    trace = None if every_s is None else asyncio.create_task(memtrace.run(frontend.sizes, every_s))
    trim = asyncio.create_task(heap.trim_every(cfg.malloc_trim_s)) if cfg.malloc_trim_s else None
    log.info(
        "scheduler ready",
        extra={
            "model": spec.name,
            "policy": cfg.policy,
            "mode": cfg.mode,
            "preemption": cfg.core.preemption,
            "device_prefix_cache": cfg.core.device_prefix_cache,
            "async_scheduling": cfg.core.async_scheduling,
            "api_keys": len(keys),
            "tls": cfg.tls is not None,
            "internal_listen": cfg.internal_listen,
        },
    )
    await service.wait_for_signal()
    # Ordered shutdown: NOT_SERVING, end open streams, stop accepting, drain, close channels.
    await frontend.shutdown()
    await service.stop(grace_s=3.0)
    await internal.stop(grace_s=1.0)
    for task in (agent_task, trace, trim):
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging("scheduler", args.log_level)
    try:
        cfg = config_from_args(args)
        KeyRing.load(cfg.api_keys)  # a bad key file fails here, in one line
    except (ValueError, OSError) as err:
        print(f"fastswitch serve scheduler: {err}", file=sys.stderr)
        return 2
    return run(serve(cfg))


if __name__ == "__main__":
    sys.exit(main())
