"""The demo runs the whole model core: data, tokenizer, training, save, reload, eval."""

from pathlib import Path

import numpy as np
import pytest

from polymodal.checkpoint import read_card
from polymodal.demo import CLASSES, draw_shape, run_demo


def test_shapes_are_drawn_in_their_colour() -> None:
    image = np.asarray(draw_shape("blue", "square", np.random.default_rng(0)))
    blue = (image[..., 2] > 180) & (image[..., 0] < 100)
    assert blue.sum() > 64 * 64 / 40  # the square covers a visible part of the image


@pytest.mark.slow
def test_demo_learns_and_saves_a_loadable_model(tmp_path: Path) -> None:
    lines: list[str] = []
    result = run_demo(tmp_path, steps=30, log=lines.append)
    card = read_card(result.model_dir)
    assert card.model_id == result.model_id and card.training["steps"] == 30
    # 18 captions: chance is 5.6%; 30 steps already learn colours.
    assert result.accuracy_after > max(0.2, result.accuracy_before + 0.1)
    assert any("step 30/30" in line for line in lines) and len(CLASSES) == 18
