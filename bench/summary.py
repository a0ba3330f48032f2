"""The summary table of BENCHMARKS.md, regenerated from bench/results/*.json.

Each row is one figure: polymodal's number, the peer's number from the same run, their
ratio (>1 means polymodal is better), and where a ceiling applies, the share of this
machine's ceiling it reaches (ceilings.json: memory read bandwidth, matmul GFLOP/s).

    python bench/summary.py          # rewrites the table between the markers in BENCHMARKS.md
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
BENCHMARKS = Path(__file__).parents[1] / "BENCHMARKS.md"
BEGIN, END = "<!-- summary:begin (bench/summary.py writes this table) -->", "<!-- summary:end -->"

Row = tuple[str, str, str, str, str, str]  # figure, polymodal, peer, ratio, ceiling share, source


def load(results: Path = RESULTS) -> dict[str, dict[str, Any]]:
    """Every result file by benchmark name."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(results.glob("*.json"))}


def rows(found: dict[str, dict[str, Any]]) -> list[Row]:
    out: list[Row] = []
    search = found.get("search", {})
    exact = search.get("results", {}).get("exact_1m", {})
    source = _source(search)
    for codes in ("fp32", "int8", "binary"):
        row = exact.get(codes)
        if not row:
            continue
        ours, peer, floor = row["polymodal_ms"], row["faiss_ms"], row["floor_ms"]
        out.append((f"exact search 1M x {exact.get('dim', 512)}, {codes} codes, one query (ms, lower is better)",
                    f"{ours:g}", f"faiss {peer:g}", f"{peer / ours:.2f}x", f"{floor / ours:.0%} of bandwidth",
                    source))
        if "polymodal_binary_backend_ms" in row:
            backend = row["polymodal_binary_backend_ms"]
            out.append(("exact search 1M, binary backend (ms)", f"{backend:g}", f"faiss {peer:g}",
                        f"{peer / backend:.2f}x", f"{floor / backend:.0%} of bandwidth", source))
    at_target = search.get("results", {}).get("hnsw_text_to_image", {}).get("at_recall_0.95", {})
    if "polymodal" in at_target and "hnswlib" in at_target:
        ours_qps, peer_qps = at_target["polymodal"]["qps"], at_target["hnswlib"]["qps"]
        out.append(("HNSW text→image queries/s at recall@10 ≥ 0.95", f"{ours_qps:,.0f}", f"hnswlib {peer_qps:,.0f}",
                    f"{ours_qps / peer_qps:.2f}x", "", source))
    serve = found.get("serve_load", {})
    for run in serve.get("results", {}).get("runs", []):
        out.append((f"serve: {run['clients']} clients (requests/s; p50 / p99 ms)", f"{run['requests_per_s']:g}; "
                    f"{run['p50_ms']:g} / {run['p99_ms']:g}", "", "", "", _source(serve)))
    ceilings = found.get("ceilings", {}).get("results", {})
    out += encoder_rows(found.get("encoders", {}), ceilings.get("fp32_gflops"))
    for key, label in (("fp32_gflops", "matmul 2048², fp32 (GFLOP/s)"), ("bf16_gflops", "matmul 2048², bf16 (GFLOP/s)"),
                       ("read_bandwidth_gbs", "memory read bandwidth (GB/s)")):
        if key in ceilings:
            out.append((f"ceiling: {label}", f"{ceilings[key]:g}", "", "", "", _source(found["ceilings"])))
    return out


def encoder_rows(record: dict[str, Any], fp32_ceiling: float | None) -> list[Row]:
    """Embedding throughput of our encoders (fp32, and int8 where it is faster) against
    transformers' CLIPModel with the same weights; fp32 as a share of the matmul ceiling."""
    out: list[Row] = []
    for arch, result in record.get("results", {}).get("architectures", {}).items():
        for modality in ("image", "text"):
            per_item = result[modality].get("gflop_per_item")
            for batch in (1, 64):
                row = result[modality].get(f"batch_{batch}")
                if not row:
                    continue
                share = f"{per_item * row['fp32_per_s'] / fp32_ceiling:.0%} of fp32 matmul" \
                    if per_item and fp32_ceiling else ""
                out.append((f"{arch} {modality}s embedded/s, batch {batch} (fp32; int8)",
                            f"{row['fp32_per_s']:g}; {row['int8_per_s']:g}", f"transformers {row['peer_per_s']:g}",
                            f"{row['fp32_over_peer']:.2f}x; {row['int8_over_peer']:.2f}x", share, _source(record)))
    return out


def _source(record: dict[str, Any]) -> str:
    return f"{record.get('benchmark', '?')}.json, {record.get('commit', '?')}, {str(record.get('date', '?'))[:10]}"


def table(found: dict[str, dict[str, Any]]) -> str:
    lines = ["| figure | polymodal | peer (same run) | ratio | of the ceiling | result file, commit, date |",
             "|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows(found)]
    return "\n".join(lines)


def rewrite(markdown: str, new_table: str) -> str:
    """`markdown` with the text between the markers replaced (markers appended if absent)."""
    if BEGIN not in markdown or END not in markdown:
        return markdown.rstrip("\n") + f"\n\n## Summary\n\n{BEGIN}\n{new_table}\n{END}\n"
    head, rest = markdown.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{new_table}\n{END}{tail}"


def main() -> None:
    BENCHMARKS.write_text(rewrite(BENCHMARKS.read_text(), table(load())))
    print(f"rewrote the summary table of {BENCHMARKS}")


if __name__ == "__main__":
    main()
