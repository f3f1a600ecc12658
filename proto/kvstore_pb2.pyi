from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Extent(_message.Message):
    __slots__ = ("start", "count")
    START_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    start: int
    count: int
    def __init__(self, start: _Optional[int] = ..., count: _Optional[int] = ...) -> None: ...

class RegisterWorkerRequest(_message.Message):
    __slots__ = ("worker_id", "model_fingerprint", "block_bytes", "device", "pool_kind", "pool_handle", "pool_blocks")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    BLOCK_BYTES_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    POOL_KIND_FIELD_NUMBER: _ClassVar[int]
    POOL_HANDLE_FIELD_NUMBER: _ClassVar[int]
    POOL_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    model_fingerprint: str
    block_bytes: int
    device: str
    pool_kind: str
    pool_handle: bytes
    pool_blocks: int
    def __init__(self, worker_id: _Optional[str] = ..., model_fingerprint: _Optional[str] = ..., block_bytes: _Optional[int] = ..., device: _Optional[str] = ..., pool_kind: _Optional[str] = ..., pool_handle: _Optional[bytes] = ..., pool_blocks: _Optional[int] = ...) -> None: ...

class RegisterWorkerResponse(_message.Message):
    __slots__ = ("arena_name", "arena_bytes", "block_bytes", "num_host_blocks", "instance")
    ARENA_NAME_FIELD_NUMBER: _ClassVar[int]
    ARENA_BYTES_FIELD_NUMBER: _ClassVar[int]
    BLOCK_BYTES_FIELD_NUMBER: _ClassVar[int]
    NUM_HOST_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    arena_name: str
    arena_bytes: int
    block_bytes: int
    num_host_blocks: int
    instance: str
    def __init__(self, arena_name: _Optional[str] = ..., arena_bytes: _Optional[int] = ..., block_bytes: _Optional[int] = ..., num_host_blocks: _Optional[int] = ..., instance: _Optional[str] = ...) -> None: ...

class UnregisterWorkerRequest(_message.Message):
    __slots__ = ("worker_id",)
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    def __init__(self, worker_id: _Optional[str] = ...) -> None: ...

class UnregisterWorkerResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReserveRequest(_message.Message):
    __slots__ = ("num_blocks", "lease_s", "owner")
    NUM_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    LEASE_S_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    num_blocks: int
    lease_s: float
    owner: str
    def __init__(self, num_blocks: _Optional[int] = ..., lease_s: _Optional[float] = ..., owner: _Optional[str] = ...) -> None: ...

class ReserveResponse(_message.Message):
    __slots__ = ("lease_id", "extents", "expires_in_s")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    EXTENTS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_S_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    extents: _containers.RepeatedCompositeFieldContainer[Extent]
    expires_in_s: float
    def __init__(self, lease_id: _Optional[str] = ..., extents: _Optional[_Iterable[_Union[Extent, _Mapping]]] = ..., expires_in_s: _Optional[float] = ...) -> None: ...

class CommitRequest(_message.Message):
    __slots__ = ("lease_id", "blocks", "block_hashes", "tenant", "ttl_s")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_HASHES_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    blocks: _containers.RepeatedScalarFieldContainer[int]
    block_hashes: _containers.RepeatedScalarFieldContainer[bytes]
    tenant: str
    ttl_s: float
    def __init__(self, lease_id: _Optional[str] = ..., blocks: _Optional[_Iterable[int]] = ..., block_hashes: _Optional[_Iterable[bytes]] = ..., tenant: _Optional[str] = ..., ttl_s: _Optional[float] = ...) -> None: ...

class CommitResponse(_message.Message):
    __slots__ = ("committed", "blocks")
    COMMITTED_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    committed: int
    blocks: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, committed: _Optional[int] = ..., blocks: _Optional[_Iterable[int]] = ...) -> None: ...

class LookupRequest(_message.Message):
    __slots__ = ("block_hashes", "pin", "lease_s", "owner")
    BLOCK_HASHES_FIELD_NUMBER: _ClassVar[int]
    PIN_FIELD_NUMBER: _ClassVar[int]
    LEASE_S_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    block_hashes: _containers.RepeatedScalarFieldContainer[bytes]
    pin: bool
    lease_s: float
    owner: str
    def __init__(self, block_hashes: _Optional[_Iterable[bytes]] = ..., pin: _Optional[bool] = ..., lease_s: _Optional[float] = ..., owner: _Optional[str] = ...) -> None: ...

class LookupResponse(_message.Message):
    __slots__ = ("blocks", "lease_id", "expires_in_s")
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_S_FIELD_NUMBER: _ClassVar[int]
    blocks: _containers.RepeatedScalarFieldContainer[int]
    lease_id: str
    expires_in_s: float
    def __init__(self, blocks: _Optional[_Iterable[int]] = ..., lease_id: _Optional[str] = ..., expires_in_s: _Optional[float] = ...) -> None: ...

class PinRequest(_message.Message):
    __slots__ = ("blocks", "lease_s", "owner", "block_hashes")
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    LEASE_S_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    BLOCK_HASHES_FIELD_NUMBER: _ClassVar[int]
    blocks: _containers.RepeatedScalarFieldContainer[int]
    lease_s: float
    owner: str
    block_hashes: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, blocks: _Optional[_Iterable[int]] = ..., lease_s: _Optional[float] = ..., owner: _Optional[str] = ..., block_hashes: _Optional[_Iterable[bytes]] = ...) -> None: ...

class PinResponse(_message.Message):
    __slots__ = ("lease_id", "expires_in_s")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_S_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    expires_in_s: float
    def __init__(self, lease_id: _Optional[str] = ..., expires_in_s: _Optional[float] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("lease_id",)
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    def __init__(self, lease_id: _Optional[str] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ("released_blocks",)
    RELEASED_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    released_blocks: int
    def __init__(self, released_blocks: _Optional[int] = ...) -> None: ...

class FreeRequest(_message.Message):
    __slots__ = ("blocks", "block_hashes")
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_HASHES_FIELD_NUMBER: _ClassVar[int]
    blocks: _containers.RepeatedScalarFieldContainer[int]
    block_hashes: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, blocks: _Optional[_Iterable[int]] = ..., block_hashes: _Optional[_Iterable[bytes]] = ...) -> None: ...

class FreeResponse(_message.Message):
    __slots__ = ("freed",)
    FREED_FIELD_NUMBER: _ClassVar[int]
    freed: int
    def __init__(self, freed: _Optional[int] = ...) -> None: ...

class StoreStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StoreStats(_message.Message):
    __slots__ = ("num_host_blocks", "free_blocks", "reserved_blocks", "committed_blocks", "pinned_blocks", "active_leases", "expired_leases", "workers", "lookups", "lookup_hit_blocks", "evictions", "block_bytes", "arena_name", "evictable_blocks", "expired_blocks", "tenants")
    NUM_HOST_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    FREE_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    RESERVED_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    PINNED_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_LEASES_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_LEASES_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    LOOKUPS_FIELD_NUMBER: _ClassVar[int]
    LOOKUP_HIT_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    EVICTIONS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_BYTES_FIELD_NUMBER: _ClassVar[int]
    ARENA_NAME_FIELD_NUMBER: _ClassVar[int]
    EVICTABLE_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    num_host_blocks: int
    free_blocks: int
    reserved_blocks: int
    committed_blocks: int
    pinned_blocks: int
    active_leases: int
    expired_leases: int
    workers: int
    lookups: int
    lookup_hit_blocks: int
    evictions: int
    block_bytes: int
    arena_name: str
    evictable_blocks: int
    expired_blocks: int
    tenants: _containers.RepeatedCompositeFieldContainer[TenantUsage]
    def __init__(self, num_host_blocks: _Optional[int] = ..., free_blocks: _Optional[int] = ..., reserved_blocks: _Optional[int] = ..., committed_blocks: _Optional[int] = ..., pinned_blocks: _Optional[int] = ..., active_leases: _Optional[int] = ..., expired_leases: _Optional[int] = ..., workers: _Optional[int] = ..., lookups: _Optional[int] = ..., lookup_hit_blocks: _Optional[int] = ..., evictions: _Optional[int] = ..., block_bytes: _Optional[int] = ..., arena_name: _Optional[str] = ..., evictable_blocks: _Optional[int] = ..., expired_blocks: _Optional[int] = ..., tenants: _Optional[_Iterable[_Union[TenantUsage, _Mapping]]] = ...) -> None: ...

class TenantUsage(_message.Message):
    __slots__ = ("tenant", "retained_blocks", "quota_blocks")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    RETAINED_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    QUOTA_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    retained_blocks: int
    quota_blocks: int
    def __init__(self, tenant: _Optional[str] = ..., retained_blocks: _Optional[int] = ..., quota_blocks: _Optional[int] = ...) -> None: ...
