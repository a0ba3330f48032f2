"""The switch every optional compiled extension of polymodal shares (`index/_scan.c`,
`models/_activations.c`, `_resample.c`, and torch's oneDNN kernels for `models/linear.py`
under POLYMODAL_ONEDNN): used when it was built (a C compiler at install time) and
POLYMODAL_NATIVE is not 0; `disabled()` turns it off for a while (parity tests, reference
timings), and its Python fallback serves.

    _extension = CompiledExtension(module_or_None, "the compiled search kernels")
    available, disabled = _extension.available, _extension.disabled
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class CompiledExtension:
    def __init__(self, module: Any, what: str, switch: str = "POLYMODAL_NATIVE") -> None:
        self._loaded = module
        self._what = what
        self.enabled = module is not None and os.environ.get(switch, "1") != "0"

    def available(self) -> bool:
        """True when the extension is built and not switched off."""
        return self.enabled

    @contextmanager
    def disabled(self) -> Iterator[None]:
        """The Python fallback for the duration."""
        before, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = before

    def isa(self) -> str:
        """The kernels in use as the extension names them ('avx512', ...), or 'none' where it
        is not built."""
        return str(self._loaded.isa()) if self._loaded is not None else "none"

    def module(self) -> Any:
        """The extension module, or an error saying why it is missing."""
        if self._loaded is None:
            raise RuntimeError(f"{self._what} are not built (no C compiler when polymodal was installed)")
        return self._loaded
