from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
    FINISH_REASON_CANCELLED: _ClassVar[FinishReason]
    FINISH_REASON_ABORTED: _ClassVar[FinishReason]
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_STOP: FinishReason
FINISH_REASON_LENGTH: FinishReason
FINISH_REASON_CANCELLED: FinishReason
FINISH_REASON_ABORTED: FinishReason

class SamplingParams(_message.Message):
    __slots__ = ("temperature", "top_p", "top_k", "seed", "max_tokens", "stop_token_ids", "ignore_eos", "stop")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STOP_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    IGNORE_EOS_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_p: float
    top_k: int
    seed: int
    max_tokens: int
    stop_token_ids: _containers.RepeatedScalarFieldContainer[int]
    ignore_eos: bool
    stop: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., seed: _Optional[int] = ..., max_tokens: _Optional[int] = ..., stop_token_ids: _Optional[_Iterable[int]] = ..., ignore_eos: _Optional[bool] = ..., stop: _Optional[_Iterable[str]] = ...) -> None: ...

class TokenIds(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("request_id", "text", "token_ids", "sampling", "tenant", "priority", "retain_ttl_s")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    RETAIN_TTL_S_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    text: str
    token_ids: TokenIds
    sampling: SamplingParams
    tenant: str
    priority: int
    retain_ttl_s: float
    def __init__(self, request_id: _Optional[str] = ..., text: _Optional[str] = ..., token_ids: _Optional[_Union[TokenIds, _Mapping]] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., tenant: _Optional[str] = ..., priority: _Optional[int] = ..., retain_ttl_s: _Optional[float] = ...) -> None: ...

class ManyRequest(_message.Message):
    __slots__ = ("tag", "generate", "cancel", "batch")
    class Cancel(_message.Message):
        __slots__ = ()
        def __init__(self) -> None: ...
    TAG_FIELD_NUMBER: _ClassVar[int]
    GENERATE_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    tag: int
    generate: GenerateRequest
    cancel: ManyRequest.Cancel
    batch: _containers.RepeatedCompositeFieldContainer[ManyRequest]
    def __init__(self, tag: _Optional[int] = ..., generate: _Optional[_Union[GenerateRequest, _Mapping]] = ..., cancel: _Optional[_Union[ManyRequest.Cancel, _Mapping]] = ..., batch: _Optional[_Iterable[_Union[ManyRequest, _Mapping]]] = ...) -> None: ...

class TaggedChunk(_message.Message):
    __slots__ = ("tag", "chunk", "code", "message")
    TAG_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    tag: int
    chunk: GenerateChunk
    code: int
    message: str
    def __init__(self, tag: _Optional[int] = ..., chunk: _Optional[_Union[GenerateChunk, _Mapping]] = ..., code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class ManyResponse(_message.Message):
    __slots__ = ("chunks",)
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    chunks: _containers.RepeatedCompositeFieldContainer[TaggedChunk]
    def __init__(self, chunks: _Optional[_Iterable[_Union[TaggedChunk, _Mapping]]] = ...) -> None: ...

class ChatRequest(_message.Message):
    __slots__ = ("conversation_id", "tenant", "system", "message", "sampling", "priority", "request_id", "ttl_s")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    tenant: str
    system: str
    message: str
    sampling: SamplingParams
    priority: int
    request_id: str
    ttl_s: float
    def __init__(self, conversation_id: _Optional[str] = ..., tenant: _Optional[str] = ..., system: _Optional[str] = ..., message: _Optional[str] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., priority: _Optional[int] = ..., request_id: _Optional[str] = ..., ttl_s: _Optional[float] = ...) -> None: ...

class RequestMetrics(_message.Message):
    __slots__ = ("queue_s", "ttft_s", "tbt_s", "e2e_s", "prompt_tokens", "cached_prompt_tokens", "preemptions", "swap_outs", "swap_ins", "recomputes")
    QUEUE_S_FIELD_NUMBER: _ClassVar[int]
    TTFT_S_FIELD_NUMBER: _ClassVar[int]
    TBT_S_FIELD_NUMBER: _ClassVar[int]
    E2E_S_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PREEMPTIONS_FIELD_NUMBER: _ClassVar[int]
    SWAP_OUTS_FIELD_NUMBER: _ClassVar[int]
    SWAP_INS_FIELD_NUMBER: _ClassVar[int]
    RECOMPUTES_FIELD_NUMBER: _ClassVar[int]
    queue_s: float
    ttft_s: float
    tbt_s: _containers.RepeatedScalarFieldContainer[float]
    e2e_s: float
    prompt_tokens: int
    cached_prompt_tokens: int
    preemptions: int
    swap_outs: int
    swap_ins: int
    recomputes: int
    def __init__(self, queue_s: _Optional[float] = ..., ttft_s: _Optional[float] = ..., tbt_s: _Optional[_Iterable[float]] = ..., e2e_s: _Optional[float] = ..., prompt_tokens: _Optional[int] = ..., cached_prompt_tokens: _Optional[int] = ..., preemptions: _Optional[int] = ..., swap_outs: _Optional[int] = ..., swap_ins: _Optional[int] = ..., recomputes: _Optional[int] = ...) -> None: ...

class GenerateChunk(_message.Message):
    __slots__ = ("request_id", "token_ids", "text", "finish_reason", "metrics", "conversation_id", "worker_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    text: str
    finish_reason: FinishReason
    metrics: RequestMetrics
    conversation_id: str
    worker_id: str
    def __init__(self, request_id: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., text: _Optional[str] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., metrics: _Optional[_Union[RequestMetrics, _Mapping]] = ..., conversation_id: _Optional[str] = ..., worker_id: _Optional[str] = ...) -> None: ...

class EndConversationRequest(_message.Message):
    __slots__ = ("conversation_id", "tenant")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    tenant: str
    def __init__(self, conversation_id: _Optional[str] = ..., tenant: _Optional[str] = ...) -> None: ...

class EndConversationResponse(_message.Message):
    __slots__ = ("freed_blocks",)
    FREED_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    freed_blocks: int
    def __init__(self, freed_blocks: _Optional[int] = ...) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("request_id", "tenant")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    tenant: str
    def __init__(self, request_id: _Optional[str] = ..., tenant: _Optional[str] = ...) -> None: ...

class CancelResponse(_message.Message):
    __slots__ = ("cancelled",)
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    cancelled: bool
    def __init__(self, cancelled: _Optional[bool] = ...) -> None: ...

class SetPriorityRequest(_message.Message):
    __slots__ = ("request_id", "priority", "tenant")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    priority: int
    tenant: str
    def __init__(self, request_id: _Optional[str] = ..., priority: _Optional[int] = ..., tenant: _Optional[str] = ...) -> None: ...

class SetPriorityResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TenantStats(_message.Message):
    __slots__ = ("tenant", "virtual_counter", "prompt_tokens", "output_tokens", "waiting", "running", "finished", "weight")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    VIRTUAL_COUNTER_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    virtual_counter: float
    prompt_tokens: int
    output_tokens: int
    waiting: int
    running: int
    finished: int
    weight: float
    def __init__(self, tenant: _Optional[str] = ..., virtual_counter: _Optional[float] = ..., prompt_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., waiting: _Optional[int] = ..., running: _Optional[int] = ..., finished: _Optional[int] = ..., weight: _Optional[float] = ...) -> None: ...

class WorkerStats(_message.Message):
    __slots__ = ("worker_id", "device", "num_blocks", "free_blocks", "running", "steps", "mean_step_s", "swap_out_bytes", "swap_in_bytes", "largest_free_run", "step_s_total", "idle_s_total", "forward_s_total", "prefill_tokens_per_s", "copy_latency_s", "copy_bytes_per_s")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    NUM_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    FREE_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    MEAN_STEP_S_FIELD_NUMBER: _ClassVar[int]
    SWAP_OUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    SWAP_IN_BYTES_FIELD_NUMBER: _ClassVar[int]
    LARGEST_FREE_RUN_FIELD_NUMBER: _ClassVar[int]
    STEP_S_TOTAL_FIELD_NUMBER: _ClassVar[int]
    IDLE_S_TOTAL_FIELD_NUMBER: _ClassVar[int]
    FORWARD_S_TOTAL_FIELD_NUMBER: _ClassVar[int]
    PREFILL_TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    COPY_LATENCY_S_FIELD_NUMBER: _ClassVar[int]
    COPY_BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    device: str
    num_blocks: int
    free_blocks: int
    running: int
    steps: int
    mean_step_s: float
    swap_out_bytes: int
    swap_in_bytes: int
    largest_free_run: int
    step_s_total: float
    idle_s_total: float
    forward_s_total: float
    prefill_tokens_per_s: float
    copy_latency_s: float
    copy_bytes_per_s: float
    def __init__(self, worker_id: _Optional[str] = ..., device: _Optional[str] = ..., num_blocks: _Optional[int] = ..., free_blocks: _Optional[int] = ..., running: _Optional[int] = ..., steps: _Optional[int] = ..., mean_step_s: _Optional[float] = ..., swap_out_bytes: _Optional[int] = ..., swap_in_bytes: _Optional[int] = ..., largest_free_run: _Optional[int] = ..., step_s_total: _Optional[float] = ..., idle_s_total: _Optional[float] = ..., forward_s_total: _Optional[float] = ..., prefill_tokens_per_s: _Optional[float] = ..., copy_latency_s: _Optional[float] = ..., copy_bytes_per_s: _Optional[float] = ...) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("waiting", "running", "swapped", "finished", "preemptions", "swap_outs", "swap_ins", "recomputes", "swap_out_bytes", "swap_in_bytes", "reuse_hit_tokens", "swap_bytes_avoided", "tenants", "workers", "policy", "mode", "cancelled", "failed", "retained_lookups", "retained_hit_blocks", "offloaded_blocks", "max_model_len", "host_hits_declined", "host_declined_tokens", "store_round_trip_s")
    WAITING_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    SWAPPED_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    PREEMPTIONS_FIELD_NUMBER: _ClassVar[int]
    SWAP_OUTS_FIELD_NUMBER: _ClassVar[int]
    SWAP_INS_FIELD_NUMBER: _ClassVar[int]
    RECOMPUTES_FIELD_NUMBER: _ClassVar[int]
    SWAP_OUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    SWAP_IN_BYTES_FIELD_NUMBER: _ClassVar[int]
    REUSE_HIT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SWAP_BYTES_AVOIDED_FIELD_NUMBER: _ClassVar[int]
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    RETAINED_LOOKUPS_FIELD_NUMBER: _ClassVar[int]
    RETAINED_HIT_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    OFFLOADED_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    MAX_MODEL_LEN_FIELD_NUMBER: _ClassVar[int]
    HOST_HITS_DECLINED_FIELD_NUMBER: _ClassVar[int]
    HOST_DECLINED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STORE_ROUND_TRIP_S_FIELD_NUMBER: _ClassVar[int]
    waiting: int
    running: int
    swapped: int
    finished: int
    preemptions: int
    swap_outs: int
    swap_ins: int
    recomputes: int
    swap_out_bytes: int
    swap_in_bytes: int
    reuse_hit_tokens: int
    swap_bytes_avoided: int
    tenants: _containers.RepeatedCompositeFieldContainer[TenantStats]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerStats]
    policy: str
    mode: str
    cancelled: int
    failed: int
    retained_lookups: int
    retained_hit_blocks: int
    offloaded_blocks: int
    max_model_len: int
    host_hits_declined: int
    host_declined_tokens: int
    store_round_trip_s: float
    def __init__(self, waiting: _Optional[int] = ..., running: _Optional[int] = ..., swapped: _Optional[int] = ..., finished: _Optional[int] = ..., preemptions: _Optional[int] = ..., swap_outs: _Optional[int] = ..., swap_ins: _Optional[int] = ..., recomputes: _Optional[int] = ..., swap_out_bytes: _Optional[int] = ..., swap_in_bytes: _Optional[int] = ..., reuse_hit_tokens: _Optional[int] = ..., swap_bytes_avoided: _Optional[int] = ..., tenants: _Optional[_Iterable[_Union[TenantStats, _Mapping]]] = ..., workers: _Optional[_Iterable[_Union[WorkerStats, _Mapping]]] = ..., policy: _Optional[str] = ..., mode: _Optional[str] = ..., cancelled: _Optional[int] = ..., failed: _Optional[int] = ..., retained_lookups: _Optional[int] = ..., retained_hit_blocks: _Optional[int] = ..., offloaded_blocks: _Optional[int] = ..., max_model_len: _Optional[int] = ..., host_hits_declined: _Optional[int] = ..., host_declined_tokens: _Optional[int] = ..., store_round_trip_s: _Optional[float] = ...) -> None: ...
