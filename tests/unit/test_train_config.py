from pathlib import Path

import pytest

from polymodal.data.sources import CaptionsSource, EmojiSource
from polymodal.errors import ConfigError
from polymodal.train.config import load_train_config, parse_overrides

RECIPE = """
output = "runs/x"
[data]
kind = "captions"
file = "c.jsonl"
caption_columns = ["captions"]
[val]
kind = "emoji"
split = "val"
[train]
batch_size = 64
"""


def test_toml_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text(RECIPE)
    cfg = load_train_config(path, ["train.batch_size=32", "optim.lr=1e-4", "model.lock_text=true",
                                   "augment.scale=[0.5, 1.0]", "model.preset=vit-tiny-64"])
    assert isinstance(cfg.data, CaptionsSource) and cfg.data.caption_columns == ("captions",)
    assert isinstance(cfg.val, EmojiSource) and cfg.val.split == "val"
    assert cfg.train.batch_size == 32 and cfg.optim.lr == 1e-4 and cfg.model.lock_text
    assert cfg.augment.scale == (0.5, 1.0) and cfg.model.preset == "vit-tiny-64"


def test_unknown_keys_and_bad_values_are_named(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text(RECIPE)
    with pytest.raises(ConfigError, match=r"train: unknown key\(s\) \['batchsize'\]"):
        load_train_config(path, ["train.batchsize=3"])
    with pytest.raises(ConfigError, match=r"loss.kind: 'ntxent' is not one of"):
        load_train_config(path, ["loss.kind=ntxent"])
    with pytest.raises(ConfigError, match="kind must be one of"):
        load_train_config(path, ["data.kind=webdataset"])
    with pytest.raises(ConfigError, match="divisible by train.accum_steps"):
        load_train_config(path, ["train.accum_steps=5"])
    with pytest.raises(ConfigError, match="needs key=value"):
        load_train_config(path, ["train.batch_size"])
    with pytest.raises(ConfigError, match="no such config file"):
        load_train_config(tmp_path / "missing.toml")
    path.write_text("output = [")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_train_config(path)


def test_override_values_are_toml_literals_or_strings() -> None:
    assert parse_overrides(["a.b=3", "a.c=hello", 'a.d="x y"', "e=[1, 2]", "f=true"]) == {
        "a": {"b": 3, "c": "hello", "d": "x y"}, "e": [1, 2], "f": True}
