"""The one compiled part of polymodal: fused exact top-k scans (src/polymodal/index/_scan.c).

Everything else is in pyproject.toml. The extension is optional: where it cannot be built
(no C compiler), polymodal installs without it and exact search runs its numpy/torch path.
"""

import sys

from setuptools import Extension, setup

flags = [] if sys.platform == "win32" else ["-O3", "-std=c11", "-pthread"]
setup(ext_modules=[Extension("polymodal.index._scan", ["src/polymodal/index/_scan.c"], extra_compile_args=flags,
                             extra_link_args=[] if sys.platform == "win32" else ["-pthread"], optional=True)])
