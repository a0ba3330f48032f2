"""Turn what a user types as DATA on the command line into a source config.

    emoji, emoji:test         the built-in emoji dataset (split train / val / test / all)
    photos/                   a folder of class folders (label = folder name), or a folder
                              holding a captions file (captions.jsonl / .csv / .tsv)
    captions.tsv              a captions table; images are relative to its folder
    shards/*.tar              webdataset-style tar shards
    flickr8k-test.toml        any source as a TOML table: kind = "captions", file = ...
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from polymodal.config import from_value
from polymodal.data.sources import (
    IMAGE_EXTENSIONS,
    CaptionsSource,
    ClassSource,
    EmojiSource,
    SourceConfig,
    TarSource,
)
from polymodal.data.tables import read_table
from polymodal.errors import ConfigError, DataError

TABLE_SUFFIXES = (".jsonl", ".csv", ".tsv")
IMAGE_COLUMNS = ("image", "file", "filename", "path")
CAPTION_COLUMNS = ("caption", "captions", "text", "texts")
EMOJI_SPLITS = ("train", "val", "test", "all")
FORMS = ("emoji[:split]", "a folder of class folders", "a folder with captions.jsonl/.csv/.tsv",
         "a captions table", "tar shards", "a .toml source table")


def resolve_source(spec: str) -> SourceConfig:
    """The source `spec` names; a DataError lists the accepted forms when none fits."""
    name, _, split = spec.partition(":")
    if name == "emoji" and not Path(spec).exists():
        split = split or "test"
        if split not in EMOJI_SPLITS:
            raise DataError(f"emoji split must be one of {list(EMOJI_SPLITS)}, got {split!r}")
        return EmojiSource(split=split)  # type: ignore[arg-type]
    path = Path(spec)
    if path.suffix == ".tar" or "*" in spec:
        return TarSource(shards=(spec,))
    if not path.exists():
        raise DataError(f"{spec}: no such file or folder (DATA may be: {'; '.join(FORMS)})")
    if path.suffix == ".toml":
        return _from_toml(path)
    if path.is_file():
        if path.suffix.lower() not in TABLE_SUFFIXES:
            raise DataError(f"{spec}: not a captions table ({', '.join(TABLE_SUFFIXES)}) or a .toml source")
        return captions_source(path)
    tables = sorted(p for p in path.iterdir() if p.suffix.lower() in TABLE_SUFFIXES and p.stem == "captions")
    if tables:
        return captions_source(tables[0])
    folders = [p for p in path.iterdir() if p.is_dir() and any(
        f.suffix.lower() in IMAGE_EXTENSIONS for f in p.rglob("*"))]
    if folders:
        return ClassSource(root=str(path))
    raise DataError(f"{spec}: neither class folders with images nor a captions.jsonl/.csv/.tsv file")


def captions_source(table: Path) -> CaptionsSource:
    """A captions table whose image and caption columns go by a usual name (image / file /
    path; caption / captions / text): the first row says which."""
    rows = read_table(table)
    if not rows:
        raise DataError(f"{table}: the captions table is empty")
    columns = set(rows[0])
    image = next((c for c in IMAGE_COLUMNS if c in columns), None)
    captions = tuple(c for c in CAPTION_COLUMNS if c in columns)
    if image is None or not captions:
        raise DataError(f"{table}: needs an image column ({'/'.join(IMAGE_COLUMNS)}) and a caption column "
                        f"({'/'.join(CAPTION_COLUMNS)}); it has {sorted(columns)}. For other names, describe "
                        "it in a .toml source table")
    return CaptionsSource(file=str(table), image_column=image, caption_columns=captions)


def _from_toml(path: Path) -> SourceConfig:
    try:
        table = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: invalid TOML ({err})") from None
    if "kind" not in table and isinstance(table.get("data"), dict):
        table = table["data"]  # a training recipe: its training data
    if "kind" not in table:
        raise ConfigError(f"{path}: a source table needs a kind (captions, tar, classes or emoji)")
    return from_value(SourceConfig, table, str(path))
