#!/usr/bin/env bash
# Install everything polymodal needs on a fresh Debian machine: system packages (emoji
# font and Unicode emoji list for the built-in datasets; Chromium for the web page's
# end-to-end tests, driven by Playwright), a virtual environment in .venv
# with the CPU build of torch (installed first: any other torch requirement would pull
# gigabytes of CUDA packages), and the project with all its extras. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends fonts-noto-color-emoji unicode-data gcc chromium \
    chromium-driver >/dev/null

if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
# pip warns about absent mirror folders on this machine; only real errors matter.
.venv/bin/pip install -q torch==2.13.0 numpy 2>&1 | grep -v "is ignored" || true
.venv/bin/python -c "import torch" || { echo "torch failed to install" >&2; exit 1; }
.venv/bin/pip install -q -e ".[index,serve,dev]" 2>&1 | grep -v "is ignored" || true
.venv/bin/python -c "import polymodal, faiss, fastapi" || { echo "polymodal failed to install" >&2; exit 1; }
# The compiled kernels (src/polymodal/index/_scan.c, src/polymodal/models/_activations.c,
# src/polymodal/_resample.c) need a C compiler; without one, polymodal installs and runs their torch/numpy paths, slower.
.venv/bin/python -c "from polymodal.index import native; raise SystemExit(not native.available())" \
    || echo "warning: the compiled search kernels were not built (no C compiler?); exact search uses numpy" >&2
.venv/bin/python -c "from polymodal.models import activations; raise SystemExit(not activations.available())" \
    || echo "warning: the compiled activation was not built (no C compiler?); QuickGELU runs as torch ops" >&2
.venv/bin/python -c "from polymodal import resample; raise SystemExit(not resample.available())" \
    || echo "warning: the compiled resize was not built (no C compiler?); Pillow resizes images" >&2
echo "polymodal is installed in .venv"
