"""The compiled parts of polymodal: fused exact top-k scans (src/polymodal/index/_scan.c),
the one-pass QuickGELU activation (src/polymodal/models/_activations.c) and Pillow-exact image
resizing (src/polymodal/_resample.c).

Everything else is in pyproject.toml. The extensions are optional: where they cannot be
built (no C compiler), polymodal installs without them; exact search then runs its
numpy/torch path, the activation its torch formula and resizing Pillow.
"""

import sys

from setuptools import Extension, setup

flags = [] if sys.platform == "win32" else ["-O3", "-std=c11", "-pthread"]
link = [] if sys.platform == "win32" else ["-pthread"]
setup(ext_modules=[
    Extension("polymodal.index._scan", ["src/polymodal/index/_scan.c"], extra_compile_args=flags,
              extra_link_args=link, optional=True),
    Extension("polymodal.models._activations", ["src/polymodal/models/_activations.c"], extra_compile_args=flags,
              extra_link_args=link, optional=True),
    # no fused multiply-adds in the filter coefficients, which must round as Pillow's do
    Extension("polymodal._resample", ["src/polymodal/_resample.c"],
              extra_compile_args=flags + ([] if sys.platform == "win32" else ["-ffp-contract=off"]),
              extra_link_args=link, optional=True),
])
