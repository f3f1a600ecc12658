"""convert.py, the worker's proto boundary: proto -> plain data -> proto keeps every field, and
proto's empty defaults become None in the plain data (and come back as the same defaults)."""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from proto import worker_pb2 as wk
from worker_svc import convert
from worker_svc.metrics import WorkerStats
from worker_svc.plan import BlockRun, RunCopy, Sampling, SeqStart, SwapIn, SwapOut, WorkerHello
from worker_svc.telemetry import GpuTelemetry


def assert_every_field_set(msg: Message, path: str = "") -> None:
    """Every field of ``msg`` (recursively) holds a non-default value, so a round trip that drops
    one, or a field added to the proto and not to convert.py, is seen."""
    for f in msg.DESCRIPTOR.fields:
        name = f"{path}{f.name}"
        value = getattr(msg, f.name)
        is_message = f.type == FieldDescriptor.TYPE_MESSAGE
        if f.is_repeated:
            assert len(value) > 0, f"{name} is empty"
            for i, item in enumerate(value if is_message else ()):
                assert_every_field_set(item, f"{name}[{i}].")
        elif is_message:
            assert msg.HasField(f.name), f"{name} is unset"
            assert_every_field_set(value, f"{name}.")
        elif f.has_presence:
            assert msg.HasField(f.name), f"{name} is unset"
        else:
            assert value != f.default_value, f"{name} has its default"


def full_plan() -> wk.StepPlan:
    sampling = wk.WorkerSampling(temperature=0.5, top_p=0.75, top_k=40, seed=0)  # exact in fp32
    return wk.StepPlan(
        step_id=7,
        start=[
            wk.SeqStart(
                seq=1,
                sampling=sampling,
                position=32,
                last_token=0,  # optional: set to 0 is not unset
                num_generated=3,
                blocks=[wk.Run(start=4, count=2), wk.Run(start=9, count=1)],
            )
        ],
        append=[wk.BlockAppend(seq=2, blocks=[wk.Run(start=11, count=1)])],
        swap_in=[
            wk.SwapIn(
                seq=3, copies=[wk.RunCopy(device_start=5, host_start=6, count=2)], lease_id="P"
            )
        ],
        prefill=[wk.PrefillChunk(seq=1, token_ids=[5, 6, 7], sample=True)],
        decode=[2, 4],
        swap_out=[
            wk.SwapOut(
                seq=8,
                copies=[wk.RunCopy(device_start=1, host_start=2, count=3)],
                lease_id="R",
                block_hashes=[b"a", b"b", b"c"],
                tenant="acme",
                ttl_s=30.0,
            )
        ],
        cancel_swap_out=[9],
        drop=[10],
    )


def full_result() -> wk.StepResult:
    return wk.StepResult(
        step_id=7,
        seqs=[1, 2],
        tokens=[0, 42],
        swap_out_done=[8],
        swap_in_done=[3],
        swap_out_cancelled=[9],
        timing=wk.StepTiming(forward_s=0.01, step_s=0.02, swap_wait_s=0.003, idle_s=0.004),
        errors=[wk.SeqError(seq=5, message="unknown sequence 5")],
        swap_out_bytes=1 << 20,
        swap_in_bytes=1 << 21,
        swap_copies=4,
        committed=[wk.CommittedBlocks(seq=8, blocks=[2, 17, 4])],
        swap_out_failed=[12],
    )


def test_step_plan_round_trip_keeps_every_field() -> None:
    msg = full_plan()
    assert_every_field_set(msg)
    plan = convert.plan_from_proto(msg)
    assert plan.start[0] == SeqStart(
        seq=1,
        sampling=Sampling(temperature=0.5, top_p=0.75, top_k=40, seed=0),
        position=32,
        last_token=0,
        num_generated=3,
        blocks=(BlockRun(4, 2), BlockRun(9, 1)),
    )
    assert plan.swap_out[0] == SwapOut(
        8, (RunCopy(1, 2, 3),), "R", (b"a", b"b", b"c"), "acme", 30.0
    )
    assert convert.plan_to_proto(plan) == msg


def test_step_result_round_trip_keeps_every_field() -> None:
    msg = full_result()
    assert_every_field_set(msg)
    result = convert.result_from_proto(msg)
    assert result.tokens == (0, 42) and result.committed[0].blocks == (2, 17, 4)
    assert convert.result_to_proto(result) == msg


def test_empty_defaults_become_none_and_come_back() -> None:
    msg = wk.StepPlan(
        step_id=1,
        start=[wk.SeqStart(seq=1, sampling=wk.WorkerSampling())],
        swap_in=[wk.SwapIn(seq=2, copies=[wk.RunCopy(device_start=0, host_start=0, count=1)])],
        swap_out=[
            wk.SwapOut(
                seq=3,
                copies=[wk.RunCopy(device_start=1, host_start=1, count=2)],
                block_hashes=[b"h", b""],
            )
        ],
    )
    plan = convert.plan_from_proto(msg)
    start = plan.start[0]
    assert start.last_token is None and start.sampling == Sampling(top_p=1.0, seed=None)
    assert plan.swap_in[0] == SwapIn(2, (RunCopy(0, 0, 1),), lease_id=None)
    assert plan.swap_out[0] == SwapOut(3, (RunCopy(1, 1, 2),), None, (b"h", None), None, None)
    back = convert.plan_to_proto(plan)
    assert not back.start[0].HasField("last_token")
    assert not back.start[0].sampling.HasField("seed")
    back.start[0].sampling.top_p = 0.0  # the one translated default: unset top_p is 1.0
    assert back == msg


def test_hello_keeps_every_field() -> None:
    msg = wk.WorkerHello(
        worker_id="w0",
        model_fingerprint="fp",
        num_blocks=64,
        block_size=16,
        block_bytes=4096,
        max_model_len=2048,
        device="cpu",
        address="127.0.0.1:50071",
        vocab_size=256,
        prefill_tokens_per_s=2000.0,
        copy_latency_s=4e-5,
        copy_bytes_per_s=1.2e10,
    )
    assert_every_field_set(msg)
    hello = WorkerHello(**{f.name: getattr(msg, f.name) for f in msg.DESCRIPTOR.fields})
    assert convert.hello_to_proto(hello) == msg


def test_stats_with_and_without_a_gpu() -> None:
    base = WorkerStats("w0", "cuda:0", 64, 3, 100, 1 << 20, 1 << 19)
    gpu = GpuTelemetry("H200", 0.5, 1 << 30, 1 << 34, 0, 0)
    msg = convert.stats_to_proto(
        WorkerStats(**{**_fields(base), "gpu": gpu, "gpu_unavailable": None})
    )
    assert_every_field_set(msg)
    assert (msg.gpu, msg.gpu_util, msg.gpu_mem_total) == ("H200", 0.5, 1 << 34)
    cpu = convert.stats_to_proto(
        WorkerStats(
            **{**_fields(base), "gpu_unavailable": "not available: the worker runs on the CPU"}
        )
    )
    assert cpu.gpu.startswith("not available") and cpu.gpu_mem_total == 0
    assert (cpu.worker_id, cpu.live_seqs, cpu.steps) == ("w0", 3, 100)


def _fields(stats: WorkerStats) -> dict[str, object]:
    return {name: getattr(stats, name) for name in WorkerStats.__slots__}
