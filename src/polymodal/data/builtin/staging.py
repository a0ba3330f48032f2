"""Writing a built-in dataset safely: never over a folder that holds something else, and
never half: the dataset is written under a temporary name and renamed into place."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from polymodal.errors import DataError

MARKER = "dataset.json"  # every built-in dataset writes it last


def check_target(out: Path, overwrite: bool, what: str, kind: str) -> None:
    """`out` must be new, empty, or (with `overwrite`) an earlier build of the same `kind`:
    a folder holding anything else is never deleted. `what` names it: "emoji dataset"."""
    if not out.exists():
        return
    if not out.is_dir():
        raise DataError(f"{out} exists and is not a folder")
    if (out / MARKER).is_file():
        found = dataset_kind(out)
        if found != kind:
            raise DataError(f"{out} holds {_a(found or 'different')} dataset, not {_a(what)}; choose another folder")
        if not overwrite:
            raise DataError(f"{out} already holds {_a(what)} (pass --overwrite to rebuild it)")
    elif any(out.iterdir()):
        raise DataError(f"{out} is not empty and holds no {what}; choose a new or empty folder")


def _a(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def dataset_kind(folder: Path) -> str:
    """The "kind" its MARKER records ("" if unreadable); emoji datasets older than the
    field say "emoji" by their count."""
    try:
        info = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return ""
    return str(info.get("kind") or ("emoji" if "emoji" in info else ""))


@contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """Yields a temporary folder beside `out`; when the block succeeds it replaces `out`,
    when it fails it is deleted and `out` is untouched."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if out.exists():  # empty, or an earlier build (check_target said so)
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
