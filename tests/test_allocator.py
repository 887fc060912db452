"""The gateway holds glibc to two malloc arenas however many threads it runs (allocator.py)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")

# Sixteen threads that each allocate, then glibc's own report: one "Arena N:" block per arena.
PROBE = """
import ctypes, sys, threading
from lamplighter.allocator import limit_arenas
print(limit_arenas() if sys.argv[1] == "limit" else None)
allocated, done = threading.Barrier(17), threading.Event()
def work():
    kept = [bytearray(600 + n % 100) for n in range(2000)]  # above pymalloc's 512 bytes
    allocated.wait()
    done.wait()
threads = [threading.Thread(target=work) for _ in range(16)]
for thread in threads:
    thread.start()
allocated.wait()
ctypes.CDLL(None).malloc_stats()
done.set()
"""


def arenas(mode: str, **env: str) -> tuple[str, int]:
    clean = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    ran = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return ran.stdout.strip(), ran.stderr.count("Arena ")


def test_threads_share_two_arenas() -> None:
    assert arenas("limit") == ("True", 2)
    assert arenas("none")[1] > 2  # what the limit prevents


def test_an_operators_malloc_arena_max_is_kept() -> None:
    assert arenas("limit", MALLOC_ARENA_MAX="3") == ("False", 3)
