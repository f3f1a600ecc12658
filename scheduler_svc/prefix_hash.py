"""Content addresses of KV blocks: hash(parent hash, the block's token ids, tenant salt).

    block 0            block 1            block 2 (partial: never content-addressed)
    [t0 .. t15]        [t16 .. t31]       [t32 .. t37]
    h0 = H(∅, b0, s)   h1 = H(h0, b1, s)  —

The salt is derived from a per-deployment secret, the tenant and the model fingerprint, so two
tenants never share, nor can time, each other's cache, and two models never mix. A block's hash
names its whole prefix: equal hashes mean equal KV.

An operator may declare a group of tenants that share (``--shared-prefix-tenants a,b,c``: a
public system prompt): its members all hash with the group's salt (``group_salt``), derived in
its own domain (another blake2b personalisation), so it is never any single tenant's salt.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterable, Sequence

DIGEST_BYTES = 16


def tenant_salt(secret: bytes, tenant: str, model_fingerprint: str) -> bytes:
    key = hashlib.blake2b(secret, digest_size=32).digest()
    msg = tenant.encode() + b"\x00" + model_fingerprint.encode()
    return hashlib.blake2b(msg, key=key, digest_size=DIGEST_BYTES).digest()


def group_salt(secret: bytes, members: Iterable[str], model_fingerprint: str) -> bytes:
    """The one salt of a declared sharing group (whatever the order its members are named in)."""
    key = hashlib.blake2b(secret, digest_size=32).digest()
    msg = b"\x00".join(t.encode() for t in sorted(set(members))) + b"\x00\x00"
    msg += model_fingerprint.encode()
    person = b"fs-share-group"  # its own domain: never a tenant_salt
    return hashlib.blake2b(msg, key=key, digest_size=DIGEST_BYTES, person=person).digest()


def extend_chain(
    chain: list[bytes], tokens: Sequence[int], block_size: int, salt: bytes, num_blocks: int
) -> list[bytes]:
    """Extends `chain` (hashes of the first full blocks of `tokens`) to `num_blocks` in place."""
    if num_blocks * block_size > len(tokens):
        raise ValueError(f"{num_blocks} full blocks need {num_blocks * block_size} tokens")
    parent = chain[-1] if chain else b""
    for i in range(len(chain), num_blocks):
        block = array("i", tokens[i * block_size : (i + 1) * block_size]).tobytes()
        h = hashlib.blake2b(parent + block, key=salt, digest_size=DIGEST_BYTES).digest()
        chain.append(h)
        parent = h
    return chain


def chain_hashes(tokens: Sequence[int], block_size: int, salt: bytes) -> list[bytes]:
    """Hashes of every full block of `tokens`."""
    return extend_chain([], tokens, block_size, salt, len(tokens) // block_size)
