from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WorkerMessage(_message.Message):
    __slots__ = ("hello", "result")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    hello: WorkerHello
    result: StepResult
    def __init__(self, hello: _Optional[_Union[WorkerHello, _Mapping]] = ..., result: _Optional[_Union[StepResult, _Mapping]] = ...) -> None: ...

class SchedulerMessage(_message.Message):
    __slots__ = ("plan", "goodbye", "accepted")
    PLAN_FIELD_NUMBER: _ClassVar[int]
    GOODBYE_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    plan: StepPlan
    goodbye: Goodbye
    accepted: Accepted
    def __init__(self, plan: _Optional[_Union[StepPlan, _Mapping]] = ..., goodbye: _Optional[_Union[Goodbye, _Mapping]] = ..., accepted: _Optional[_Union[Accepted, _Mapping]] = ...) -> None: ...

class Accepted(_message.Message):
    __slots__ = ("worker_id",)
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    def __init__(self, worker_id: _Optional[str] = ...) -> None: ...

class WorkerHello(_message.Message):
    __slots__ = ("worker_id", "model_fingerprint", "num_blocks", "block_size", "block_bytes", "max_model_len", "device", "address", "vocab_size", "prefill_tokens_per_s", "copy_latency_s", "copy_bytes_per_s")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    NUM_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    BLOCK_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_MODEL_LEN_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    PREFILL_TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    COPY_LATENCY_S_FIELD_NUMBER: _ClassVar[int]
    COPY_BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    model_fingerprint: str
    num_blocks: int
    block_size: int
    block_bytes: int
    max_model_len: int
    device: str
    address: str
    vocab_size: int
    prefill_tokens_per_s: float
    copy_latency_s: float
    copy_bytes_per_s: float
    def __init__(self, worker_id: _Optional[str] = ..., model_fingerprint: _Optional[str] = ..., num_blocks: _Optional[int] = ..., block_size: _Optional[int] = ..., block_bytes: _Optional[int] = ..., max_model_len: _Optional[int] = ..., device: _Optional[str] = ..., address: _Optional[str] = ..., vocab_size: _Optional[int] = ..., prefill_tokens_per_s: _Optional[float] = ..., copy_latency_s: _Optional[float] = ..., copy_bytes_per_s: _Optional[float] = ...) -> None: ...

class Goodbye(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class WorkerSampling(_message.Message):
    __slots__ = ("temperature", "top_p", "top_k", "seed")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_p: float
    top_k: int
    seed: int
    def __init__(self, temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class Run(_message.Message):
    __slots__ = ("start", "count")
    START_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    start: int
    count: int
    def __init__(self, start: _Optional[int] = ..., count: _Optional[int] = ...) -> None: ...

class SeqStart(_message.Message):
    __slots__ = ("seq", "sampling", "position", "last_token", "num_generated", "blocks")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    LAST_TOKEN_FIELD_NUMBER: _ClassVar[int]
    NUM_GENERATED_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    sampling: WorkerSampling
    position: int
    last_token: int
    num_generated: int
    blocks: _containers.RepeatedCompositeFieldContainer[Run]
    def __init__(self, seq: _Optional[int] = ..., sampling: _Optional[_Union[WorkerSampling, _Mapping]] = ..., position: _Optional[int] = ..., last_token: _Optional[int] = ..., num_generated: _Optional[int] = ..., blocks: _Optional[_Iterable[_Union[Run, _Mapping]]] = ...) -> None: ...

class BlockAppend(_message.Message):
    __slots__ = ("seq", "blocks")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    blocks: _containers.RepeatedCompositeFieldContainer[Run]
    def __init__(self, seq: _Optional[int] = ..., blocks: _Optional[_Iterable[_Union[Run, _Mapping]]] = ...) -> None: ...

class PrefillChunk(_message.Message):
    __slots__ = ("seq", "token_ids", "sample")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    sample: bool
    def __init__(self, seq: _Optional[int] = ..., token_ids: _Optional[_Iterable[int]] = ..., sample: _Optional[bool] = ...) -> None: ...

class RunCopy(_message.Message):
    __slots__ = ("device_start", "host_start", "count")
    DEVICE_START_FIELD_NUMBER: _ClassVar[int]
    HOST_START_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    device_start: int
    host_start: int
    count: int
    def __init__(self, device_start: _Optional[int] = ..., host_start: _Optional[int] = ..., count: _Optional[int] = ...) -> None: ...

class SwapOut(_message.Message):
    __slots__ = ("seq", "copies", "lease_id", "block_hashes", "tenant", "ttl_s")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    COPIES_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    BLOCK_HASHES_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    seq: int
    copies: _containers.RepeatedCompositeFieldContainer[RunCopy]
    lease_id: str
    block_hashes: _containers.RepeatedScalarFieldContainer[bytes]
    tenant: str
    ttl_s: float
    def __init__(self, seq: _Optional[int] = ..., copies: _Optional[_Iterable[_Union[RunCopy, _Mapping]]] = ..., lease_id: _Optional[str] = ..., block_hashes: _Optional[_Iterable[bytes]] = ..., tenant: _Optional[str] = ..., ttl_s: _Optional[float] = ...) -> None: ...

class SwapIn(_message.Message):
    __slots__ = ("seq", "copies", "lease_id")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    COPIES_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    seq: int
    copies: _containers.RepeatedCompositeFieldContainer[RunCopy]
    lease_id: str
    def __init__(self, seq: _Optional[int] = ..., copies: _Optional[_Iterable[_Union[RunCopy, _Mapping]]] = ..., lease_id: _Optional[str] = ...) -> None: ...

class StepPlan(_message.Message):
    __slots__ = ("step_id", "start", "append", "swap_in", "prefill", "decode", "swap_out", "cancel_swap_out", "drop")
    STEP_ID_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    APPEND_FIELD_NUMBER: _ClassVar[int]
    SWAP_IN_FIELD_NUMBER: _ClassVar[int]
    PREFILL_FIELD_NUMBER: _ClassVar[int]
    DECODE_FIELD_NUMBER: _ClassVar[int]
    SWAP_OUT_FIELD_NUMBER: _ClassVar[int]
    CANCEL_SWAP_OUT_FIELD_NUMBER: _ClassVar[int]
    DROP_FIELD_NUMBER: _ClassVar[int]
    step_id: int
    start: _containers.RepeatedCompositeFieldContainer[SeqStart]
    append: _containers.RepeatedCompositeFieldContainer[BlockAppend]
    swap_in: _containers.RepeatedCompositeFieldContainer[SwapIn]
    prefill: _containers.RepeatedCompositeFieldContainer[PrefillChunk]
    decode: _containers.RepeatedScalarFieldContainer[int]
    swap_out: _containers.RepeatedCompositeFieldContainer[SwapOut]
    cancel_swap_out: _containers.RepeatedScalarFieldContainer[int]
    drop: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, step_id: _Optional[int] = ..., start: _Optional[_Iterable[_Union[SeqStart, _Mapping]]] = ..., append: _Optional[_Iterable[_Union[BlockAppend, _Mapping]]] = ..., swap_in: _Optional[_Iterable[_Union[SwapIn, _Mapping]]] = ..., prefill: _Optional[_Iterable[_Union[PrefillChunk, _Mapping]]] = ..., decode: _Optional[_Iterable[int]] = ..., swap_out: _Optional[_Iterable[_Union[SwapOut, _Mapping]]] = ..., cancel_swap_out: _Optional[_Iterable[int]] = ..., drop: _Optional[_Iterable[int]] = ...) -> None: ...

class StepTiming(_message.Message):
    __slots__ = ("forward_s", "step_s", "swap_wait_s", "idle_s")
    FORWARD_S_FIELD_NUMBER: _ClassVar[int]
    STEP_S_FIELD_NUMBER: _ClassVar[int]
    SWAP_WAIT_S_FIELD_NUMBER: _ClassVar[int]
    IDLE_S_FIELD_NUMBER: _ClassVar[int]
    forward_s: float
    step_s: float
    swap_wait_s: float
    idle_s: float
    def __init__(self, forward_s: _Optional[float] = ..., step_s: _Optional[float] = ..., swap_wait_s: _Optional[float] = ..., idle_s: _Optional[float] = ...) -> None: ...

class SeqError(_message.Message):
    __slots__ = ("seq", "message")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    message: str
    def __init__(self, seq: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class StepResult(_message.Message):
    __slots__ = ("step_id", "seqs", "tokens", "swap_out_done", "swap_in_done", "swap_out_cancelled", "timing", "errors", "swap_out_bytes", "swap_in_bytes", "swap_copies", "committed", "swap_out_failed")
    STEP_ID_FIELD_NUMBER: _ClassVar[int]
    SEQS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    SWAP_OUT_DONE_FIELD_NUMBER: _ClassVar[int]
    SWAP_IN_DONE_FIELD_NUMBER: _ClassVar[int]
    SWAP_OUT_CANCELLED_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    SWAP_OUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    SWAP_IN_BYTES_FIELD_NUMBER: _ClassVar[int]
    SWAP_COPIES_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_FIELD_NUMBER: _ClassVar[int]
    SWAP_OUT_FAILED_FIELD_NUMBER: _ClassVar[int]
    step_id: int
    seqs: _containers.RepeatedScalarFieldContainer[int]
    tokens: _containers.RepeatedScalarFieldContainer[int]
    swap_out_done: _containers.RepeatedScalarFieldContainer[int]
    swap_in_done: _containers.RepeatedScalarFieldContainer[int]
    swap_out_cancelled: _containers.RepeatedScalarFieldContainer[int]
    timing: StepTiming
    errors: _containers.RepeatedCompositeFieldContainer[SeqError]
    swap_out_bytes: int
    swap_in_bytes: int
    swap_copies: int
    committed: _containers.RepeatedCompositeFieldContainer[CommittedBlocks]
    swap_out_failed: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, step_id: _Optional[int] = ..., seqs: _Optional[_Iterable[int]] = ..., tokens: _Optional[_Iterable[int]] = ..., swap_out_done: _Optional[_Iterable[int]] = ..., swap_in_done: _Optional[_Iterable[int]] = ..., swap_out_cancelled: _Optional[_Iterable[int]] = ..., timing: _Optional[_Union[StepTiming, _Mapping]] = ..., errors: _Optional[_Iterable[_Union[SeqError, _Mapping]]] = ..., swap_out_bytes: _Optional[int] = ..., swap_in_bytes: _Optional[int] = ..., swap_copies: _Optional[int] = ..., committed: _Optional[_Iterable[_Union[CommittedBlocks, _Mapping]]] = ..., swap_out_failed: _Optional[_Iterable[int]] = ...) -> None: ...

class CommittedBlocks(_message.Message):
    __slots__ = ("seq", "blocks")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    blocks: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, seq: _Optional[int] = ..., blocks: _Optional[_Iterable[int]] = ...) -> None: ...

class WorkerStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerStatsResponse(_message.Message):
    __slots__ = ("worker_id", "device", "num_blocks", "live_seqs", "steps", "swap_out_bytes", "swap_in_bytes", "gpu", "gpu_util", "gpu_mem_used", "gpu_mem_total")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    NUM_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    LIVE_SEQS_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    SWAP_OUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    SWAP_IN_BYTES_FIELD_NUMBER: _ClassVar[int]
    GPU_FIELD_NUMBER: _ClassVar[int]
    GPU_UTIL_FIELD_NUMBER: _ClassVar[int]
    GPU_MEM_USED_FIELD_NUMBER: _ClassVar[int]
    GPU_MEM_TOTAL_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    device: str
    num_blocks: int
    live_seqs: int
    steps: int
    swap_out_bytes: int
    swap_in_bytes: int
    gpu: str
    gpu_util: float
    gpu_mem_used: int
    gpu_mem_total: int
    def __init__(self, worker_id: _Optional[str] = ..., device: _Optional[str] = ..., num_blocks: _Optional[int] = ..., live_seqs: _Optional[int] = ..., steps: _Optional[int] = ..., swap_out_bytes: _Optional[int] = ..., swap_in_bytes: _Optional[int] = ..., gpu: _Optional[str] = ..., gpu_util: _Optional[float] = ..., gpu_mem_used: _Optional[int] = ..., gpu_mem_total: _Optional[int] = ...) -> None: ...
