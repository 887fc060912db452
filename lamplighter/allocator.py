"""glibc's allocator, held to two arenas for a long-running server.

glibc gives every thread that allocates an arena of its own, up to eight per core, and memory
freed in one arena is not reused by another. The gateway has many threads (one per pooled
aiosqlite connection, plus the workers of anyio's and asyncio's pools), so its resident size
crept up for as long as it served: in a 5-minute soak at 500 streams (``lamplighter bench
overhead --soak 300``) it grew 11.2% after the warm-up with glibc's default and 5.5% with two
arenas, at the same requests/s. Two is what ``MALLOC_ARENA_MAX=2`` sets, the usual advice for
threaded Python and Ruby servers; an operator who sets that variable keeps their own choice.
"""

from __future__ import annotations

import ctypes
import os
import platform

M_ARENA_MAX = -8  # mallopt's parameter number, from glibc's <malloc.h>
ARENAS = 2


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap the arenas threads may create from now on; call it before starting threads.
    False where it does not apply: not glibc, or ``MALLOC_ARENA_MAX`` already set."""
    if "MALLOC_ARENA_MAX" in os.environ or platform.libc_ver()[0] != "glibc":
        return False
    return bool(ctypes.CDLL(None).mallopt(M_ARENA_MAX, arenas))
