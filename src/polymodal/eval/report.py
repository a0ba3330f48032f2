"""What every evaluator returns, and how it is written: result.json (every number),
report.md (the same numbers in tables, with the plots), and one PNG per plot.

The Markdown is made from the JSON's values with one formatting rule (`format_value`),
so the two can never disagree.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from polymodal import __version__
from polymodal.checkpoint import write_text_atomic

MAX_PLOTTED_VALUES = 20_000  # histogram inputs are sampled down to this many values


@dataclass
class Plot:
    kind: str  # a drawing function of eval/plots.py
    title: str
    data: dict[str, Any]

    @property
    def file_name(self) -> str:
        return f"{self.kind}.png"


@dataclass
class Evaluation:
    task: str  # retrieval | zeroshot | linear-probe | weat
    metrics: dict[str, float]
    primary_metric: str
    info: dict[str, Any] = field(default_factory=dict)  # data, counts, settings, seconds
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (item, reason)
    plots: list[Plot] = field(default_factory=list)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # title -> rows
    metric_groups: dict[str, list[str]] = field(default_factory=dict)  # title -> metric names, for the report

    @property
    def primary(self) -> float:
        return self.metrics[self.primary_metric]

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task, "primary_metric": self.primary_metric, "metrics": self.metrics,
                "info": self.info, "tables": self.tables,
                "skipped": [{"item": item, "reason": reason} for item, reason in self.skipped]}


def sample_values(values: np.ndarray, limit: int = MAX_PLOTTED_VALUES, seed: int = 0) -> list[float]:
    """At most `limit` of `values` (a fixed random subset), as plain floats for a plot."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size > limit:
        values = np.random.default_rng(seed).choice(values, limit, replace=False)
    return [float(v) for v in values]


def format_value(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        return str(value).replace("|", "\\|")  # a pipe would split a Markdown table cell
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    number = float(value)
    if not np.isfinite(number):
        return str(number)
    return f"{number:.4g}" if abs(number) < 1 else f"{number:.2f}"


def provenance() -> dict[str, str]:
    """Version, commit (when run from a git checkout), machine and date of a result."""
    info = {"polymodal": __version__, "python": sys.version.split()[0], "machine": platform.machine(),
            "cpus": str(os.cpu_count()), "date": datetime.now(UTC).isoformat(timespec="seconds")}
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent, check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        commit = ""
    if commit:
        info["commit"] = commit
    return info


def write_report(evaluation: Evaluation, out: str | Path, plots: bool = True) -> Path:
    """Write result.json, report.md and the plots into `out`; returns report.md's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    evaluation.info = {**provenance(), **evaluation.info}
    # The numbers first: a plotting failure must not lose a long evaluation.
    write_text_atomic(out / "result.json", json.dumps(_finite(evaluation.to_json()), indent=2, allow_nan=False,
                                                  default=_json_default) + "\n")
    written = []
    if plots:
        from polymodal.eval.plots import draw

        for plot in evaluation.plots:
            try:
                draw(plot, out / plot.file_name)
                written.append(plot)
            except Exception as err:  # noqa: BLE001 - any matplotlib failure only costs the figure
                warnings.warn(f"could not draw {plot.file_name}: {err}", stacklevel=2)
    report = out / "report.md"
    write_text_atomic(report, _markdown(evaluation, written))
    return report


def _finite(value: Any) -> Any:
    """NaN and infinities become null (JSON has no such numbers)."""
    if isinstance(value, float | np.floating):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _markdown(evaluation: Evaluation, plots: list[Plot]) -> str:
    lines = [f"# {evaluation.task} evaluation", ""]
    lines += ["| | |", "|---|---|"]
    lines += [f"| {key} | {format_value(value)} |" for key, value in evaluation.info.items()]
    lines += ["", f"**{evaluation.primary_metric}** (primary metric): "
                  f"**{format_value(evaluation.primary)}**", ""]
    groups = evaluation.metric_groups or {"metrics": list(evaluation.metrics)}
    grouped = {name for names in groups.values() for name in names}
    rest = [name for name in evaluation.metrics if name not in grouped]
    if rest:
        groups = {**groups, "other": rest}
    for title, names in groups.items():
        names = [n for n in names if n in evaluation.metrics]
        if not names:
            continue
        lines += [f"## {format_value(title)}", "", "| " + " | ".join(map(format_value, names)) + " |",
                  "|" + "---|" * len(names),
                  "| " + " | ".join(format_value(evaluation.metrics[n]) for n in names) + " |", ""]
    for plot in plots:
        lines += [f"## {plot.title}", "", f"![{plot.title}]({plot.file_name})", ""]
    for title, rows in evaluation.tables.items():
        if not rows:
            continue
        columns = list(dict.fromkeys(c for row in rows for c in row))  # rows may lack some (an error row)
        lines += [f"## {title}", "", "| " + " | ".join(map(format_value, columns)) + " |",
                  "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(format_value(row.get(c, "")) for c in columns) + " |" for row in rows]
        lines.append("")
    if evaluation.skipped:
        lines += [f"## Skipped ({len(evaluation.skipped)})", ""]
        lines += [f"- `{item}`: {reason}" for item, reason in evaluation.skipped[:100]]
        if len(evaluation.skipped) > 100:
            lines.append(f"- ... and {len(evaluation.skipped) - 100} more (all in result.json)")
        lines.append("")
    return "\n".join(lines)
