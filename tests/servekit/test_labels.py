"""BoundedLabels: a capped, stable mapping of client-chosen strings to label values."""

from __future__ import annotations

import threading

import pytest

from servekit.labels import OTHER, BoundedLabels


def test_first_values_keep_their_own_label_and_the_rest_are_other():
    labels = BoundedLabels(2, seed=("gold",))
    assert [labels.label(v) for v in ("a", "b", "gold", "a", "c")] == [
        "a",
        OTHER,
        "gold",
        "a",
        OTHER,
    ]
    assert labels.named() == ("gold", "a")


def test_seeded_values_count_even_beyond_the_cap():
    labels = BoundedLabels(1, seed=("x", "y"))
    assert (labels.label("y"), labels.label("z")) == ("y", OTHER)
    assert labels.named() == ("x", "y")


def test_a_negative_cap_is_refused():
    with pytest.raises(ValueError, match="-1"):
        BoundedLabels(-1)


def test_concurrent_callers_never_exceed_the_cap():
    labels = BoundedLabels(10)
    out: list[str] = []

    def work(k: int) -> None:
        out.extend(labels.label(f"t{k}-{i}") for i in range(50))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(labels.named()) == 10
    assert {v for v in out if v != OTHER} == set(labels.named())
