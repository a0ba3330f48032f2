"""Image-text sources behind one interface: a config dataclass (with a `kind`, as in
training TOML files) and a loader returning a `PairSet`.

    captions  a folder of images + a JSONL/CSV/TSV captions file (several captions per image)
    tar       webdataset-style tar shards: key.jpg + key.txt or key.json
    classes   class folders, or an image/label table; captions from prompt templates
    emoji     the built-in emoji dataset (built from system packages on first use)
"""

from __future__ import annotations

import os

import glob
import json
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from polymodal.data.records import ImageRef, PairRecord, PairSet
from polymodal.data.tables import column, read_lines, read_table
from polymodal.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")
# CLIP's zero-shot templates include many more; these are the ones useful as captions.
DEFAULT_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.", "{}")


@dataclass(frozen=True)
class CaptionsSource:
    """Images listed in a captions table; rows naming the same image are merged."""

    kind: ClassVar[str] = "captions"
    file: str
    images: str = ""  # folder the image column is relative to; "" = the table's folder
    image_column: str = "image"  # dotted for nested JSON, e.g. "files.twitter"
    caption_columns: tuple[str, ...] = ("caption",)  # each a string or a list of strings
    split: str = ""  # a file of image names (one per line) to keep
    where: dict[str, Any] = field(default_factory=dict)  # keep rows whose column equals value
    where_empty: tuple[str, ...] = ()  # keep rows where these columns are null, "" or absent


@dataclass(frozen=True)
class TarSource:
    """Uncompressed tar shards of key.<image> + key.txt (or key.json with a caption field)."""

    kind: ClassVar[str] = "tar"
    shards: tuple[str, ...]  # paths or glob patterns
    caption_keys: tuple[str, ...] = ("caption", "captions", "text")  # fields of key.json


@dataclass(frozen=True)
class ClassSource:
    """Labelled images: class folders under `root`, or a `labels` table; captions come
    from `templates` filled with the class name; images of a class are positives."""

    kind: ClassVar[str] = "classes"
    root: str = ""  # a folder of class folders
    labels: str = ""  # or a table with image and label columns
    images: str = ""  # folder the labels table's paths are relative to; "" = its folder
    image_column: str = "file"
    label_column: str = "label"
    class_names: str = ""  # optional table mapping labels to readable names
    class_key_column: str = "label"
    class_name_column: str = "name"
    class_synonyms_column: str = ""  # comma-separated further names in the class_names table
    templates: tuple[str, ...] = DEFAULT_TEMPLATES


@dataclass(frozen=True)
class EmojiSource:
    """The built-in emoji dataset (see data/builtin/emoji.py)."""

    kind: ClassVar[str] = "emoji"
    root: str = ""  # where it is built; "" = <cache>/datasets/emoji
    split: Literal["train", "val", "test", "all"] = "train"


@dataclass(frozen=True)
class QuestionsSource:
    """Visual questions, one JSON line each ({"image", "question", "answer", "type",
    "split"}), as `polymodal data build shapes` writes them. A record's caption is the
    question and its group the answer's index in the answer vocabulary: the sorted
    answers of the whole file, so every split shares it."""

    kind: ClassVar[str] = "questions"
    file: str
    images: str = ""  # folder the image column is relative to; "" = the file's folder
    split: str = ""  # keep the questions of this split ("" = all)


SourceConfig = CaptionsSource | TarSource | ClassSource | EmojiSource | QuestionsSource


def image_files(folder: str | Path) -> list[Path]:
    """Every image file under `folder` (recursively, by extension), in path order. As
    `Path.rglob` lists them (symbolic links to directories are not followed, unreadable
    directories are passed over), at a stat call less per file: scandir's entries know
    which are directories and files without one."""
    found: list[str] = []
    pending = [os.fspath(folder)]
    while pending:
        try:
            entries = list(os.scandir(pending.pop()))
        except OSError:  # unreadable, gone, or not a directory
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                elif _suffix(entry.name).lower() in IMAGE_EXTENSIONS and entry.is_file():
                    found.append(entry.path)
            except OSError:  # a link in a loop, or to where we may not look: not a file, as for is_file()
                continue
    return [Path(p) for p in sorted(found, key=lambda p: p.split(os.sep))]  # Path order: part by part


def _suffix(name: str) -> str:
    """`Path(name).suffix`: from the last dot, unless the name starts or ends there."""
    dot = name.rfind(".")
    return name[dot:] if 0 < dot < len(name) - 1 else ""


# --------------------------------------------------------------------------- loaders


def load_captions(cfg: CaptionsSource) -> PairSet:
    table = Path(cfg.file)
    root = Path(cfg.images) if cfg.images else table.parent
    records: list[PairRecord] = []
    dropped: dict[str, str] = {}
    for image, texts in captions_by_image(cfg).items():
        path = root / image
        if not texts:
            dropped[image] = "no caption"
        elif not path.is_file():
            dropped[image] = "file not found"
        else:
            unique = tuple(dict.fromkeys(texts))  # keep order, drop repeats
            records.append(PairRecord(ImageRef(str(path)), unique, group=len(records), key=image))
    return PairSet(records, name=str(table), dropped=dropped)


def captions_by_image(cfg: CaptionsSource) -> dict[str, list[str]]:
    """Image (as the table names it) -> its captions in first-seen order, after the
    source's row filters and split."""
    table = Path(cfg.file)
    keep = set(read_lines(cfg.split)) if cfg.split else None
    captions: dict[str, list[str]] = {}
    for number, row in enumerate(read_table(table), 1):
        if any(column(row, k, table, number) != v for k, v in cfg.where.items()):
            continue
        if any(row.get(k) not in (None, "") for k in cfg.where_empty):
            continue
        image = str(column(row, cfg.image_column, table, number))
        if keep is not None and image not in keep and Path(image).name not in keep:
            continue
        texts = captions.setdefault(image, [])
        for name in cfg.caption_columns:
            value = column(row, name, table, number)
            texts.extend(v.strip() for v in (value if isinstance(value, list) else [value])
                         if isinstance(v, str) and v.strip())
    return captions


def load_tar(cfg: TarSource) -> PairSet:
    shards = sorted({p for pattern in cfg.shards for p in (glob.glob(pattern) or [pattern])})
    records: list[PairRecord] = []
    dropped: dict[str, str] = {}
    for shard in shards:
        if not Path(shard).is_file():
            raise DataError(f"{shard}: no such tar shard")
        try:
            with tarfile.open(shard, "r:") as tar:
                _index_shard(tar, shard, cfg, records, dropped)
        except tarfile.ReadError as err:
            raise DataError(f"{shard}: not an uncompressed tar file ({err}); webdataset shards "
                            "must be plain .tar for random access") from None
    return PairSet(records, name=",".join(cfg.shards), dropped=dropped)


def _index_shard(tar: tarfile.TarFile, shard: str, cfg: TarSource, records: list[PairRecord],
                 dropped: dict[str, str]) -> None:
    images: dict[str, tarfile.TarInfo] = {}
    texts: dict[str, list[str]] = {}
    for member in tar.getmembers():
        if not member.isfile():
            continue
        key, _, ext = member.name.rpartition(".")
        ext = "." + ext.lower()
        if ext in IMAGE_EXTENSIONS:
            images[key] = member
        elif ext in (".txt", ".json"):
            raw = tar.extractfile(member)
            data = raw.read().decode("utf-8", errors="replace") if raw else ""
            texts[key] = _tar_captions(data, ext, cfg.caption_keys)
    for key, member in images.items():
        if not texts.get(key):
            dropped[f"{shard}:{member.name}"] = "no caption"
            continue
        ref = ImageRef(shard, member.name, member.offset_data, member.size)
        records.append(PairRecord(ref, tuple(texts[key]), group=len(records), key=key))


def _tar_captions(data: str, ext: str, keys: tuple[str, ...]) -> list[str]:
    if ext == ".txt":
        return [line.strip() for line in data.splitlines() if line.strip()]
    try:
        obj = json.loads(data)
    except json.JSONDecodeError:
        return []
    for key in keys:
        value = obj.get(key) if isinstance(obj, dict) else None
        if isinstance(value, str) and value.strip():
            return [value.strip()]
        if isinstance(value, list):
            return [v.strip() for v in value if isinstance(v, str) and v.strip()]
    return []


def load_classes(cfg: ClassSource) -> PairSet:
    if bool(cfg.root) == bool(cfg.labels):
        raise DataError("a classes source needs exactly one of root (class folders) or labels (a table)")
    items: list[tuple[Path, str]] = []  # (image path, label)
    if cfg.root:
        root = Path(cfg.root)
        if not root.is_dir():
            raise DataError(f"{root}: no such folder")
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            items += [(f, folder.name) for f in image_files(folder)]
    else:
        table = Path(cfg.labels)
        base = Path(cfg.images) if cfg.images else table.parent
        for number, row in enumerate(read_table(table), 1):
            image = column(row, cfg.image_column, table, number)
            items.append((base / str(image), str(column(row, cfg.label_column, table, number))))
    names, synonyms = _class_names(cfg)
    labels = sorted({label for _, label in items})
    index = {label: i for i, label in enumerate(labels)}
    class_names = [names.get(label, label.replace("_", " ").replace("-", " ")) for label in labels]
    records, dropped = [], {}
    for path, label in items:
        if not path.is_file():
            dropped[str(path)] = "file not found"
            continue
        name = class_names[index[label]]
        captions = tuple(t.format(name) for t in cfg.templates)
        records.append(PairRecord(ImageRef(str(path)), captions, group=index[label],
                                  key=f"{name}/{path.name}"))
    class_synonyms = [tuple(s for s in synonyms.get(label, ()) if s != name)
                      for label, name in zip(labels, class_names, strict=True)]
    return PairSet(records, name=cfg.root or cfg.labels, dropped=dropped, class_names=class_names,
                   class_synonyms=class_synonyms)


def _class_names(cfg: ClassSource) -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    """label -> readable name, and label -> synonyms, from the class_names table."""
    if not cfg.class_names:
        return {}, {}
    table = Path(cfg.class_names)
    names, synonyms = {}, {}
    for n, row in enumerate(read_table(table), 1):
        key = str(column(row, cfg.class_key_column, table, n))
        names[key] = str(column(row, cfg.class_name_column, table, n))
        if cfg.class_synonyms_column:
            value = column(row, cfg.class_synonyms_column, table, n)
            parts = value if isinstance(value, list) else str(value or "").split(",")
            synonyms[key] = tuple(dict.fromkeys(p.strip() for p in parts if p.strip()))
    return names, synonyms


def load_emoji(cfg: EmojiSource) -> PairSet:
    from polymodal.data.builtin.emoji import ensure_emoji_dataset

    root = ensure_emoji_dataset(Path(cfg.root) if cfg.root else None)
    where = {} if cfg.split == "all" else {"split": cfg.split}
    pairs = load_captions(CaptionsSource(file=str(root / "captions.jsonl"), caption_columns=("captions",),
                                         where=where))
    pairs.name = f"emoji ({cfg.split})"
    return pairs


def load_questions(cfg: QuestionsSource) -> PairSet:
    path = Path(cfg.file)
    if not path.is_file():
        raise DataError(f"{path}: no such questions file")
    root = Path(cfg.images) if cfg.images else path.parent
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows.append((str(row["image"]), str(row["question"]), str(row["answer"]), str(row.get("type", "")),
                         str(row.get("split", ""))))
        except (ValueError, KeyError, TypeError) as err:
            raise DataError(f"{path}:{number}: not a question row ({err})") from None
    answers = sorted({answer for _, _, answer, _, _ in rows})
    index = {answer: i for i, answer in enumerate(answers)}
    records, dropped = [], {}
    for image, question, answer, kind, split in rows:
        if cfg.split and split != cfg.split:
            continue
        if not (root / image).is_file():
            dropped[image] = "file not found"
            continue
        records.append(PairRecord(ImageRef(str(root / image)), (question,), index[answer], kind))
    name = f"{path.name} ({cfg.split})" if cfg.split else path.name
    return PairSet(records, name, dropped, class_names=answers)


LOADERS: dict[type, Callable[[Any], PairSet]] = {
    CaptionsSource: load_captions, TarSource: load_tar, ClassSource: load_classes, EmojiSource: load_emoji,
    QuestionsSource: load_questions,
}


def load_source(cfg: SourceConfig) -> PairSet:
    """The records of any source; an empty result is an error naming the source."""
    pairs = LOADERS[type(cfg)](cfg)
    if not pairs.records:
        reasons = f" ({len(pairs.dropped)} dropped, e.g. {next(iter(pairs.dropped.items()))})" \
            if pairs.dropped else ""
        raise DataError(f"no image-caption pairs in {pairs.name}{reasons}")
    return pairs
