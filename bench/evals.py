"""Collect the standard-protocol reports of scripts/run_evals.sh (evals/*/result.json)
into bench/results/evals.json and print the quality tables of BENCHMARKS.md.

    bash scripts/run_recipes.sh && bash scripts/run_evals.sh && python bench/evals.py
"""

from __future__ import annotations

import json
from pathlib import Path

from common import write_result

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    results = {}
    for result_file in sorted((ROOT / "evals").glob("*/result.json")):
        result = json.loads(result_file.read_text())
        results[result_file.parent.name] = {"task": result["task"], "metrics": result["metrics"],
                                            "model": result["info"]["model"], "model_id": result["info"]["model_id"],
                                            "data": result["info"]["data_spec"], "commit": result["info"].get("commit"),
                                            "date": result["info"]["date"]}
    write_result("evals", results)
    print("| model (run) | text→image R@1 / R@5 / R@10 | image→text R@1 / R@5 / R@10 | median rank t→i / i→t |")
    print("|---|---|---|---|")
    for r in results.values():
        if r["task"] != "retrieval":
            continue
        m = r["metrics"]
        print(f"| `{_run(r)}` on {Path(r['data']).stem} | {m['t2i_r1']:.1f} / {m['t2i_r5']:.1f} / {m['t2i_r10']:.1f} | "
              f"{m['i2t_r1']:.1f} / {m['i2t_r5']:.1f} / {m['i2t_r10']:.1f} | "
              f"{m['t2i_median_rank']:.0f} / {m['i2t_median_rank']:.0f} |")
    print()
    print("| model (run) | CIFAR-10 top-1 | CIFAR-10 top-1, 8-prompt ensemble | Tiny ImageNet top-1 / top-5 |")
    print("|---|---|---|---|")
    runs = sorted({_run(r) for r in results.values() if r["task"] == "zeroshot"})
    for run in runs:
        def metric(suffix: str, key: str, run: str = run) -> str:
            r = results.get(f"zeroshot-{run}-{suffix}")
            return f"{r['metrics'][key]:.1f}" if r else "-"
        print(f"| `{run}` | {metric('cifar10', 'top1')} | {metric('cifar10-ensemble', 'top1')} | "
              f"{metric('tinyimagenet', 'top1')} / {metric('tinyimagenet', 'top5')} |")


    weat = {_run(r): r["metrics"] for r in results.values() if r["task"] == "weat"}
    if weat:
        runs = sorted(weat)
        tests = [k.removesuffix("_effect_size") for k in weat[runs[0]] if k.endswith("_effect_size")
                 and k != "mean_abs_effect_size"]
        print()
        print("| test | " + " | ".join(f"`{run}` d (p)" for run in runs) + " |")
        print("|---|" + "---|" * len(runs))
        for test in tests:
            cells = [f"{weat[run][f'{test}_effect_size']:+.2f} ({weat[run][f'{test}_p_value']:.3g})" for run in runs]
            print(f"| {test} | " + " | ".join(cells) + " |")
        print("| mean \\|d\\| | " + " | ".join(f"{weat[run]['mean_abs_effect_size']:.2f}" for run in runs) + " |")
    for r in results.values():
        if r["task"] == "linear-probe":
            m = r["metrics"]
            shots = ", ".join(f"{k.removeprefix('top1_')} {v:.1f}" for k, v in m.items()
                              if k.startswith("top1_") and not k.endswith("_std"))
            top5 = m.get("top5", float("nan"))
            print(f"\nlinear probe `{_run(r)}`: top-1 {m['top1']:.1f}, top-5 {top5:.1f}; {shots}")


def _run(result: dict) -> str:
    model = Path(result["model"])
    return model.parent.name if model.name == "model" else model.name


if __name__ == "__main__":
    main()
