"""The C heap under a Python service: what glibc's malloc holds, and giving its free part back.

A service whose live heap swings with its load (the scheduler: ~13 KiB of Python objects per
request in flight, so a backlog of thousands after a worker dies is tens of MiB) keeps the freed
memory in malloc's arenas: glibc returns only the top of the main heap by itself. RSS then
stays at the high-water mark of the load, and a soak cannot tell it from a leak.
``malloc_trim(0)`` gives every free page of every arena back (``MADV_DONTNEED``); run now and
then (:func:`trim_every`) it makes RSS follow the live heap. It cannot return pymalloc's arenas
that still hold a live object (fragmentation); those are bounded by the peak load. Without
glibc (musl, macOS) both functions do nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging

log = logging.getLogger(__name__)


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            *("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks"),
            *("uordblks", "fordblks", "keepcost"),
        )
    ]


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def malloc_kib() -> dict[str, int]:
    """glibc malloc's heap: ``malloc_used_kib`` (allocated, mmapped blocks included) and
    ``malloc_free_kib`` (free in its arenas, not returned to the system); empty without
    glibc >= 2.33 (``mallinfo2``)."""
    mallinfo2 = getattr(_libc(), "mallinfo2", None)
    if mallinfo2 is None:
        return {}
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    return {
        "malloc_used_kib": (info.uordblks + info.hblkhd) // 1024,
        "malloc_free_kib": info.fordblks // 1024,
    }


def trim() -> bool:
    """``malloc_trim(0)``: True when glibc gave memory back to the system."""
    malloc_trim = getattr(_libc(), "malloc_trim", None)
    return bool(malloc_trim(0)) if malloc_trim is not None else False


async def trim_every(every_s: float) -> None:
    """Until cancelled: :func:`trim` every `every_s` seconds, off the event loop (it walks the
    free lists: milliseconds for the scheduler's heap, the GIL released meanwhile)."""
    while True:
        await asyncio.sleep(every_s)
        await asyncio.to_thread(trim)
