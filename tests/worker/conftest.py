"""Shared fixtures of the worker tests: the tiny model (loaded once) and small factories."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from servekit.modelspec import ModelSpec
from worker_svc.engine import Engine
from worker_svc.loader import load_model
from worker_svc.model import LlamaModel

from .helpers import new_pool

Loaded = tuple[ModelSpec, LlamaModel]


@pytest.fixture(scope="session")
def tiny() -> Loaded:
    """``(spec, model)`` of the embedded tiny model on the CPU (fp32)."""
    return load_model("tiny")


@pytest.fixture
def make_engine(tiny: Loaded) -> Callable[..., Engine]:
    """``make_engine(num_blocks=64, block_size=16)``: a tiny-model engine with a fresh pool."""

    def make(num_blocks: int = 64, block_size: int = 16) -> Engine:
        spec, model = tiny
        return Engine(model, spec, new_pool(spec, model, num_blocks, block_size))

    return make
