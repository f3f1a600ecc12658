"""API keys, one format for both doors (the scheduler's gRPC API and the HTTP door).

A key names an identity: its tenant, its role, and optionally the tenant's fairness weight and
priority class. The file has one key per line (``#`` starts a comment)::

    KEY TENANT [weight=W] [priority=P] [role=tenant|admin|service]

or is a JSON object ``{"KEY": "TENANT", "KEY2": {"tenant": "bob", "weight": 2, "priority": 1,
"role": "tenant"}, ...}``. Keys are at least 8 characters. Two keys may name the same tenant
(rotation); the weight and priority they give must then agree.

* ``tenant`` (the default role): acts as its tenant or a narrowing of it (:func:`narrows`).
* ``service`` (the HTTP door): acts for any tenant (it authenticates its own clients).
* ``admin``: acts for any tenant and sees every tenant in the statistics.

Keys are kept and looked up only by their SHA-256 digest, so how long a lookup takes says
nothing about how much of a guess was right. No proto, no service: both doors import this.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

ROLES = ("tenant", "admin", "service")
MIN_KEY_CHARS = 8
#: Where a process finds its keys when no ``--api-keys FILE`` is given: a file, or the text.
ENV_FILE = "FASTSWITCH_API_KEYS_FILE"
ENV_TEXT = "FASTSWITCH_API_KEYS_TEXT"


class UnknownKey(Exception):
    """Keys are on and a call's credentials are missing or name no key (the message says which;
    it never repeats the key)."""


def narrows(tenant: str, base: str) -> bool:
    """True when `tenant` is `base` or a narrowing of it: `base` followed by ``.`` and more
    (``alice.sub`` and ``alice.sub.x`` narrow ``alice``; ``alicex`` and ``bob`` do not)."""
    return tenant == base or tenant.startswith(base + ".")


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a key is: its tenant, its role, and the tenant's weight and priority class (None:
    not set by the key file)."""

    tenant: str
    role: str = "tenant"
    weight: float | None = None
    priority: int | None = None

    def __post_init__(self) -> None:
        if not self.tenant:
            raise ValueError("a key's tenant is empty")
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {self.role!r}")
        if self.weight is not None and not (math.isfinite(self.weight) and self.weight > 0):
            raise ValueError(f"weight of {self.tenant!r} must be > 0, got {self.weight}")

    @property
    def any_tenant(self) -> bool:
        """A service or admin key acts for any tenant."""
        return self.role in ("service", "admin")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def _bearer(authorization: str) -> str | None:
    scheme, _, key = authorization.strip().partition(" ")
    return key.strip() if scheme.lower() == "bearer" else None


class KeyRing:
    """Key digest -> :class:`Identity`. Empty: keys are off and the door is open.

    Invariant: every tenant has at most one weight and one priority class over all its keys."""

    def __init__(self, keys: Mapping[str, str | Identity] | None = None) -> None:
        self._ids: dict[bytes, Identity] = {}
        self._classes: dict[str, Identity] = {}
        for key, who in (keys or {}).items():
            self._add(key, who if isinstance(who, Identity) else Identity(who))

    def _add(self, key: str, who: Identity) -> None:
        if len(key) < MIN_KEY_CHARS:
            raise ValueError(f"a key of {len(key)} characters is too short (>= {MIN_KEY_CHARS})")
        self._add_digest(_digest(key), who)

    def _add_digest(self, digest: bytes, who: Identity) -> None:
        if digest in self._ids:
            raise ValueError(f"a key of tenant {who.tenant!r} is listed twice")
        if who.weight is not None or who.priority is not None:
            known = self._classes.get(who.tenant)
            if known is not None:
                for name in ("weight", "priority"):
                    mine, theirs = getattr(who, name), getattr(known, name)
                    if mine is not None and theirs is not None and mine != theirs:
                        raise ValueError(
                            f"tenant {who.tenant!r} has two {name}s: {theirs} and {mine}"
                        )
                weight = who.weight if who.weight is not None else known.weight
                priority = who.priority if who.priority is not None else known.priority
                self._classes[who.tenant] = Identity(who.tenant, weight=weight, priority=priority)
            else:
                self._classes[who.tenant] = who
        self._ids[digest] = who

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_text(cls, text: str, *, source: str = "keys") -> Self:
        """Parses a key file's text; ValueError naming `source` (and the line) that is wrong."""
        try:
            if text.lstrip().startswith(("{", "[")):
                return cls(_from_json(text, source))
            return cls(_from_lines(text, source))
        except ValueError as err:
            msg = str(err)
            raise ValueError(msg if msg.startswith(source) else f"{source}: {msg}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> Self:
        """Reads a key file; ValueError naming the file (and the line) that is wrong."""
        return cls.from_text(Path(path).read_text(encoding="utf-8"), source=str(path))

    @classmethod
    def load(
        cls, paths: Iterable[str | Path] = (), environ: Mapping[str, str] | None = None
    ) -> Self:
        """The keys of `paths` merged; with none, those of ``$FASTSWITCH_API_KEYS_FILE`` or the
        text in ``$FASTSWITCH_API_KEYS_TEXT``; else an empty ring (keys off)."""
        env = os.environ if environ is None else environ
        paths = list(paths)
        if not paths and env.get(ENV_FILE):
            paths = [env[ENV_FILE]]
        if not paths:
            text = env.get(ENV_TEXT, "")
            return cls.from_text(text, source=ENV_TEXT) if text.strip() else cls()
        ring = cls()
        for path in paths:
            ring = ring.merged(cls.from_file(path))
        return ring

    def merged(self, other: KeyRing) -> Self:
        """A ring with the keys of both (ValueError for a key in both or disagreeing classes)."""
        out = type(self)()
        for ring in (self, other):
            for digest, who in ring._ids.items():
                out._add_digest(digest, who)
        return out

    # ------------------------------------------------------------------ lookups

    @property
    def enabled(self) -> bool:
        return bool(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def identity_for(self, authorization: str | None) -> Identity | None:
        """The identity of a call's ``authorization`` value (``Bearer KEY``); None when keys
        are off. UnknownKey when keys are on and it is missing, not Bearer, or unknown."""
        if not self._ids:
            return None
        if not authorization:
            raise UnknownKey("missing API key: send 'authorization: Bearer KEY'")
        key = _bearer(authorization)
        who = self._ids.get(_digest(key)) if key is not None else None
        if who is None:
            raise UnknownKey("invalid API key")
        return who

    def tenant_for(self, authorization: str | None) -> str | None:
        """The tenant of a call's ``authorization`` value; None when keys are off (UnknownKey
        as :meth:`identity_for`)."""
        who = self.identity_for(authorization)
        return None if who is None else who.tenant

    def weights(self) -> dict[str, float]:
        """The weights the key file gives, by tenant."""
        return {t: c.weight for t, c in self._classes.items() if c.weight is not None}

    def priority_classes(self) -> dict[str, int]:
        """The priority classes the key file gives, by tenant."""
        return {t: c.priority for t, c in self._classes.items() if c.priority is not None}

    def tenants(self) -> set[str]:
        """Every tenant a key names."""
        return {who.tenant for who in self._ids.values()}


def _identity(fields: Mapping[str, Any], where: str) -> Identity:
    unknown = set(fields) - {"tenant", "role", "weight", "priority"}
    if unknown:
        raise ValueError(f"{where}: unknown field {sorted(unknown)[0]!r}")
    tenant, role = fields.get("tenant"), fields.get("role", "tenant")
    weight, priority = fields.get("weight"), fields.get("priority")
    if not isinstance(tenant, str) or not isinstance(role, str):
        raise ValueError(f"{where}: tenant and role must be strings")
    try:
        if weight is not None:
            weight = float(weight)
        if priority is not None:
            if isinstance(priority, float | bool):
                raise ValueError(priority)
            priority = int(priority)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: weight must be a number and priority an integer") from None
    try:
        return Identity(tenant, role, weight, priority)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def _from_lines(text: str, source: str) -> dict[str, Identity]:
    keys: dict[str, Identity] = {}
    for n, line in enumerate(text.splitlines(), 1):
        parts = line.split("#", 1)[0].split()
        if not parts:
            continue
        where = f"{source}:{n}"
        if len(parts) < 2:
            raise ValueError(f"{where}: expected 'KEY TENANT [weight=W] [priority=P] [role=R]'")
        fields: dict[str, Any] = {"tenant": parts[1]}
        for opt in parts[2:]:
            name, sep, value = opt.partition("=")
            if not sep or name in fields:
                raise ValueError(f"{where}: expected weight=W, priority=P or role=R, got {opt!r}")
            fields[name] = value
        if parts[0] in keys:
            raise ValueError(f"{where}: this key is listed twice")
        keys[parts[0]] = _identity(fields, where)
    return keys


def _from_json(text: str, source: str) -> dict[str, Identity]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{source}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f'{source}: expected {{"KEY": "TENANT" or {{"tenant": ...}}, ...}}')
    keys: dict[str, Identity] = {}
    for i, (key, value) in enumerate(data.items(), 1):
        where = f"{source}: key #{i}"
        if isinstance(value, str):
            value = {"tenant": value}
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a tenant name or an object")
        keys[key] = _identity(value, where)
    return keys


def read_key_file(path: str | Path) -> str:
    """The key in a client's key file: the first word of its first line that is not a comment
    (a bare key, or a key-file line ``KEY TENANT ...``). ValueError when there is none."""
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        words = line.split("#", 1)[0].split()
        if words:
            return words[0]
    raise ValueError(f"{path}: holds no key")
