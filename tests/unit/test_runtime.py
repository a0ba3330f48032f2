"""The allocator setting of polymodal.runtime: applied and undone through glibc's
mallopt, skipped on request, and harmless to the numbers a model computes."""

import ctypes
import os
import subprocess
import sys

import pytest
import torch

from polymodal import runtime

glibc_only = pytest.mark.skipif(not sys.platform.startswith("linux") or runtime._glibc() is None,
                                reason="mallopt is glibc's")


@glibc_only
def test_tuning_calls_mallopt_with_the_heap_settings_and_restores_the_defaults(monkeypatch) -> None:
    calls: list[tuple[int, int]] = []

    class FakeLibc:
        def mallopt(self, param: int, value: int) -> int:
            calls.append((param, value))
            return 1

    monkeypatch.setattr(runtime, "_glibc", lambda: FakeLibc())
    assert runtime.tune_allocator() is True
    assert calls == [(runtime.M_MMAP_MAX, 0), (runtime.M_TRIM_THRESHOLD, runtime.KEEP_FREED_BYTES)]
    calls.clear()
    assert runtime.tune_allocator(False) is True
    assert calls == [(runtime.M_MMAP_MAX, runtime.SYSTEM_MMAP_MAX),
                     (runtime.M_TRIM_THRESHOLD, runtime.SYSTEM_TRIM_THRESHOLD)]


@glibc_only
def test_a_refused_setting_is_reported_as_not_applied(monkeypatch) -> None:
    class RefusingLibc:
        def mallopt(self, param: int, value: int) -> int:
            return 0

    monkeypatch.setattr(runtime, "_glibc", lambda: RefusingLibc())
    assert runtime.tune_allocator() is False


def test_the_environment_can_keep_the_system_allocator(monkeypatch) -> None:
    monkeypatch.setenv("POLYMODAL_ALLOCATOR", "system")
    monkeypatch.setattr(runtime, "_glibc", lambda: pytest.fail("glibc must not be touched"))
    assert runtime.tune_allocator() is False


@glibc_only
def test_the_real_allocator_setting_changes_no_result() -> None:
    torch.manual_seed(0)
    layer = torch.nn.Sequential(torch.nn.Linear(512, 4096), torch.nn.GELU(), torch.nn.Linear(4096, 512))
    x = torch.randn(256, 512)  # 4 MiB activations: above glibc's first mmap threshold
    with torch.no_grad():
        expected = layer(x)
        try:
            assert runtime.tune_allocator() is True
            tuned = [layer(x) for _ in range(3)]  # reuses freed heap memory
        finally:
            runtime.tune_allocator(False)
    assert all(torch.equal(t, expected) for t in tuned)
    assert isinstance(runtime._glibc(), ctypes.CDLL)


# Run in a fresh interpreter: mallopt settings outlive the call, and the count of blocks
# glibc has mmapped (mallinfo2().hblks) must start from a process that never tuned.
_MMAPPED_BLOCKS_AFTER_A_LARGE_ALLOCATION = """
import ctypes, sys
from polymodal import runtime

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                 "fordblks", "keepcost")]

libc = runtime._glibc()
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
if sys.argv[1] == "tuned":
    assert runtime.tune_allocator()
before = libc.mallinfo2().hblks
block = libc.malloc(64 << 20)  # far above any mmap threshold glibc would use by default
print(libc.mallinfo2().hblks - before)
libc.free(ctypes.c_void_p(block))
"""


@glibc_only
@pytest.mark.parametrize(("setting", "new_mmapped_blocks"), [("system", 1), ("tuned", 0)])
def test_tuned_processes_serve_large_blocks_from_the_heap(setting: str, new_mmapped_blocks: int) -> None:
    # Checks glibc's own account, so a wrong mallopt parameter number (which glibc accepts
    # and ignores) fails here.
    libc = runtime._glibc()
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("mallinfo2 needs glibc 2.33")
    env = {**os.environ, "POLYMODAL_ALLOCATOR": "tuned"}
    done = subprocess.run([sys.executable, "-c", _MMAPPED_BLOCKS_AFTER_A_LARGE_ALLOCATION, setting],
                          capture_output=True, text=True, env=env, check=True)
    assert int(done.stdout) == new_mmapped_blocks
