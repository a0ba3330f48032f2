"""`polymodal quickstart` on a small emoji set: trains once, then reuses the cached model."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from polymodal.cli import app
from polymodal.data.builtin.emoji import EMOJI_FONT, EMOJI_TEST, build_emoji_dataset
from polymodal.index.store import Store
from polymodal.quickstart import quickstart_config, run_quickstart

needs_emoji = pytest.mark.skipif(not (EMOJI_FONT.is_file() and EMOJI_TEST.is_file()),
                                 reason="needs fonts-noto-color-emoji and unicode-data (scripts/setup.sh)")
TINY = ["train.steps=4", "train.batch_size=8", "train.eval_every=2", "train.log_every=1"]


@pytest.fixture(scope="module")
def small_emoji(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 120 fully-qualified emoji of the system list, rendered at 32 px."""
    root = tmp_path_factory.mktemp("emoji")
    lines, kept = [], 0
    for line in EMOJI_TEST.read_text(encoding="utf-8").splitlines():
        qualified = "; fully-qualified" in line
        if line.startswith("# group:") or line.startswith("# subgroup:") or (qualified and kept < 120):
            lines.append(line)
            kept += qualified
    (root / "emoji-test.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    build_emoji_dataset(root / "dataset", size=32, emoji_test=root / "emoji-test.txt")
    return root / "dataset"


def test_the_recipe_is_cached_under_a_hash_of_its_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLYMODAL_HOME", str(tmp_path))
    a, b = quickstart_config(), quickstart_config(overrides=["train.steps=5"])
    assert a.output.startswith(str(tmp_path / "runs" / "quickstart-")) and a.output != b.output
    assert a.output == quickstart_config().output
    assert a.model.preset == "vit-tiny-p16-64-minilm" and a.model.lock_text and a.val is not None


@needs_emoji
@pytest.mark.slow
def test_quickstart_trains_then_reuses_its_model(small_emoji: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLYMODAL_HOME", str(tmp_path))
    queries = ["a smiling face", "a cat"]
    first = run_quickstart(queries=queries, top_k=3, emoji_root=small_emoji, overrides=TINY, show_progress=False)
    assert not first.cached and set(first.metrics) >= {"t2i_r1", "i2t_r10", "mean_recall"}
    assert list(first.examples) == queries and all(len(m) == 3 for m in first.examples.values())
    top = first.examples["a smiling face"]
    assert top[0].score >= top[1].score >= top[2].score and top[0].char and top[0].name
    with Store(first.store) as store:  # every emoji image, with its names as captions
        assert store.count("image") == len(list((small_emoji / "images").glob("*.png"))) and store.count("text")
        generation = store.generation
    second = run_quickstart(queries=queries, top_k=3, emoji_root=small_emoji, overrides=TINY, show_progress=False)
    assert second.cached and second.model_id == first.model_id and second.metrics == first.metrics
    assert second.examples == first.examples
    with Store(second.store) as store:
        assert store.generation == generation  # the cached run embedded nothing

    retrained = run_quickstart(queries=[], retrain=True, emoji_root=small_emoji, overrides=TINY, show_progress=False)
    assert not retrained.cached and retrained.examples == {}
    assert retrained.model_id == first.model_id  # the same seed and data train the same weights

    overrides = [arg for s in TINY for arg in ("--set", s)]
    result = CliRunner().invoke(app, ["quickstart", "--no-serve", "--data", str(small_emoji), "--query",
                                      "a smiling face", *overrides],
                                env={"POLYMODAL_HOME": str(tmp_path), "COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert f"model {first.model_id} (cached model" in result.output
    assert "text -> image" in result.output and "'a smiling face' ->" in result.output


def test_quickstart_refuses_a_data_folder_that_is_not_an_emoji_set(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLYMODAL_HOME", str(tmp_path / "home"))
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"...")
    result = CliRunner().invoke(app, ["quickstart", "--data", str(folder)])
    assert result.exit_code != 0 and (folder / "holiday.jpg").exists()
    assert "not empty and holds no emoji dataset" in str(result.exception)
