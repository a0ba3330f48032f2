"""Reading caption and label tables: JSON Lines, CSV and TSV, with errors that name the
file, the line and the column."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from polymodal.errors import DataError


def read_table(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a .jsonl (one object per line), .csv or .tsv (header row) file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        rows = []
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}:{number}: not valid JSON ({err.msg})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}:{number}: expected a JSON object per line")
                rows.append(row)
        return rows
    if suffix in (".csv", ".tsv", ".txt"):
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="," if suffix == ".csv" else "\t")
            if not reader.fieldnames:
                raise DataError(f"{path}: empty table (no header row)")
            return [dict(row) for row in reader]
    raise DataError(f"{path}: unknown table format {suffix!r} (use .jsonl, .csv or .tsv)")


def lookup(row: dict[str, Any], column: str) -> Any:
    """row["a"]["b"] for column "a.b" (nested JSON); KeyError when absent."""
    value: Any = row
    for part in column.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(column)
        value = value[part]
    return value


def column(row: dict[str, Any], name: str, path: Path, number: int) -> Any:
    """`lookup` with a DataError naming the file, row and available columns."""
    try:
        return lookup(row, name)
    except KeyError:
        raise DataError(f"{path}: row {number} has no column {name!r} "
                        f"(columns: {', '.join(sorted(row))})") from None


def read_lines(path: str | Path) -> list[str]:
    """Non-empty stripped lines of a text file (split files, lists of names)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
