"""Issue 12: the allocator settings every csbs process takes at its start (csbs.memory)."""

from __future__ import annotations

import platform

import pytest

from csbs import memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the settings are glibc's")
def test_on_glibc_the_arenas_are_limited_and_free_memory_is_given_back() -> None:
    assert memory.limit_arenas()
    junk = [bytearray(1 << 20) for _ in range(64)]
    del junk
    memory.give_back()  # returns, whatever is free
