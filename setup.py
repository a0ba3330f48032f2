"""The compiled parts of polymodal: fused exact top-k scans (src/polymodal/index/_scan.c) and
the one-pass QuickGELU activation (src/polymodal/models/_activations.c).

Everything else is in pyproject.toml. The extensions are optional: where they cannot be
built (no C compiler), polymodal installs without them; exact search then runs its
numpy/torch path and the activation its torch formula.
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
])
