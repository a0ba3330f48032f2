"""The report's figures (matplotlib, drawn off-screen). One function per `Plot.kind`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: reports are written by batch jobs and servers

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from polymodal.eval.report import Plot  # noqa: E402

LABELLED_CLASSES = 30  # a confusion matrix names its classes up to this many
BARS = 40  # per-class accuracy shows all classes up to this many, else the best and worst 20


def recall_curve(ax: Axes, data: dict[str, Any]) -> None:
    for label, values in data["curves"].items():
        ax.plot(data["ks"], values, marker="o", label=label)
    ax.set_xscale("log")
    ax.set_xticks(data["ks"], [str(k) for k in data["ks"]])
    ax.set_xlabel("K")
    ax.set_ylabel("recall@K (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()


def similarity_histogram(ax: Axes, data: dict[str, Any]) -> None:
    values = data["matched"] + data["unmatched"]
    low, high = min(values), max(values)
    if high - low < 1e-6:  # all equal: give the one bar some width
        low, high = low - 0.5, high + 0.5
    bins = [float(b) for b in np.linspace(low, high, 60)]
    ax.hist(data["unmatched"], bins=bins, density=True, alpha=0.6, label="unmatched")
    ax.hist(data["matched"], bins=bins, density=True, alpha=0.6, label="matched")
    ax.axvline(data["threshold"], color="black", linestyle="--", label=f"threshold {data['threshold']:.3f}")
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("density")
    ax.legend()


def confusion(ax: Axes, data: dict[str, Any]) -> None:
    matrix = np.asarray(data["matrix"], dtype=np.float64)
    rows = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ax.figure.colorbar(image, ax=ax, fraction=0.046, label="fraction of the true class")
    names = data["classes"]
    if len(names) <= LABELLED_CLASSES:
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")


def per_class(ax: Axes, data: dict[str, Any]) -> None:
    pairs = sorted(zip(data["accuracy"], data["classes"], strict=True), reverse=True)
    if len(pairs) > BARS:
        pairs = pairs[:BARS // 2] + pairs[-BARS // 2:]
        ax.set_title(f"best and worst {BARS // 2} classes", fontsize=9)
    values = [100.0 * a for a, _ in pairs]
    ax.barh(range(len(pairs)), values)
    ax.set_yticks(range(len(pairs)), [name for _, name in pairs], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("top-1 accuracy (%)")
    ax.set_xlim(0, 100)


def few_shot(ax: Axes, data: dict[str, Any]) -> None:
    ax.errorbar(data["shots"], data["mean"], yerr=data["std"], marker="o", capsize=3, label="few-shot")
    if data.get("full") is not None:
        ax.axhline(data["full"], color="black", linestyle="--", label="all training data")
    ax.set_xscale("log")
    ax.set_xticks(data["shots"], [str(k) for k in data["shots"]])
    ax.set_xlabel("training images per class")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend()


def association(ax: Axes, data: dict[str, Any]) -> None:
    names, effects = data["tests"], data["effect_sizes"]
    colours = ["tab:red" if p < 0.05 else "tab:gray" for p in data["p_values"]]
    ax.barh(range(len(names)), effects, color=colours)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlim(-2, 2)
    ax.set_xlabel("effect size d (red: p < 0.05)")


def recall_qps(ax: Axes, data: dict[str, Any]) -> None:
    """One point per index configuration; Pareto-optimal ones filled and labelled."""
    for point in data["points"]:
        pareto = point["pareto"]
        ax.scatter(point["qps"], point["recall"], s=40, marker="o",
                   facecolors="tab:blue" if pareto else "none", edgecolors="tab:blue")
        ax.annotate(point["label"], (point["qps"], point["recall"]), fontsize=7, xytext=(4, 2),
                    textcoords="offset points", alpha=1.0 if pareto else 0.6)
    ax.set_xscale("log")
    ax.set_xlabel("queries per second (log)")
    ax.set_ylabel("recall@10 vs exact float32")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)


DRAWERS: dict[str, Callable[[Axes, dict[str, Any]], None]] = {
    "recall_curve": recall_curve, "similarity_histogram": similarity_histogram, "confusion": confusion,
    "per_class": per_class, "few_shot": few_shot, "association": association, "recall_qps": recall_qps,
}


def draw(plot: Plot, path: Path) -> None:
    size = (8, 7) if plot.kind == "confusion" else (7, max(4, 0.18 * len(plot.data.get("classes", []))
                                                          if plot.kind == "per_class" else 4.5))
    figure: Figure = plt.figure(figsize=(size[0], min(size[1], 12)))
    try:
        ax = figure.add_subplot()
        DRAWERS[plot.kind](ax, plot.data)
        figure.suptitle(plot.title)
        figure.tight_layout()
        tmp = path.with_name(path.name + ".tmp.png")
        figure.savefig(tmp, dpi=110)
        tmp.replace(path)
    finally:
        plt.close(figure)
