"""Shared fixtures: tiny configs and images made at test time, never the external data sets."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

# Offline always: a test that tried to reach the Hub would fail instead of downloading.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def noise_image(rng: np.random.Generator) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8), "RGB")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
