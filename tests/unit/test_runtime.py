"""The allocator setting of polymodal.runtime: applied and undone through glibc's
mallopt, skipped on request, and harmless to the numbers a model computes."""

import ctypes
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
