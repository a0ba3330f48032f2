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
    for name in ("search", "search_exact", "search_hnsw"):  # "search": both parts, as older runs wrote them
        out += search_rows(found.get(name, {}))
    serve = found.get("serve_load", {})
    for run in serve.get("results", {}).get("runs", []):
        out.append((f"serve: {run['clients']} clients (requests/s; p50 / p99 ms)", f"{run['requests_per_s']:g}; "
                    f"{run['p50_ms']:g} / {run['p99_ms']:g}", "", "", "", _source(serve)))
    ceilings = found.get("ceilings", {}).get("results", {})
    out += encoder_rows(found.get("encoders", {}), ceilings.get("fp32_gflops"))
    out += text_bulk_rows(found.get("text_bulk", {}))
    out += train_step_rows(found.get("train_step", {}))
    out += ingest_rows(found.get("ingest", {}))
    out += preprocess_rows(found.get("preprocess", {}))
    out += gpu_encoder_rows(found.get("encoders-cuda", {}), found.get("ceilings-cuda", {}).get("results", {}))
    out += train_step_rows(found.get("train_step-cuda", {}))
    for key, label in (("fp32_gflops", "matmul 2048², fp32 (GFLOP/s)"), ("bf16_gflops", "matmul 2048², bf16 (GFLOP/s)"),
                       ("read_bandwidth_gbs", "memory read bandwidth (GB/s)")):
        if key in ceilings:
            out.append((f"ceiling: {label}", f"{ceilings[key]:g}", "", "", "", _source(found["ceilings"])))
    gpu = found.get("ceilings-cuda", {})
    for key, label in (("fp32_gflops", "matmul 8192², fp32 (GFLOP/s)"), ("bf16_gflops", "matmul 8192², bf16 (GFLOP/s)"),
                       ("copy_bandwidth_gbs", "device copy, read + write (GB/s)")):
        if key in gpu.get("results", {}):
            out.append((f"ceiling, {gpu['results'].get('device', 'GPU')}: {label}", f"{gpu['results'][key]:,.0f}",
                        "", "", "", _source(gpu)))
    return out


def search_rows(record: dict[str, Any]) -> list[Row]:
    """Exact search at 1M vectors against faiss and the memory-bandwidth floor (the floor
    measured beside each query where the run recorded it); HNSW queries/s against hnswlib
    at the same recall."""
    out: list[Row] = []
    results, source = record.get("results", {}), _source(record)
    exact = results.get("exact_1m", {})
    for codes in ("fp32", "int8", "binary"):
        row = exact.get(codes)
        if not row:
            continue
        ours, peer, floor = row["polymodal_ms"], row["faiss_ms"], row["floor_ms"]
        # newer runs time the floor beside each query and give medians of per-round ratios
        speed = row.get("polymodal_speed_vs_faiss", peer / ours)
        of_floor = 1 / row["polymodal_vs_floor"] if "read_gbs" in row else floor / ours
        out.append((f"exact search 1M x {exact.get('dim', 512)}, {codes} codes, one query (ms, lower is better)",
                    f"{ours:g}", f"faiss {peer:g}", f"{speed:.2f}x", f"{of_floor:.0%} of bandwidth", source))
        if "polymodal_binary_backend_ms" in row:
            backend = row["polymodal_binary_backend_ms"]
            of_floor = 1 / row["binary_backend_vs_floor"] if "binary_backend_vs_floor" in row else floor / backend
            out.append(("exact search 1M, binary backend (ms)", f"{backend:g}", f"faiss {peer:g}",
                        f"{peer / backend:.2f}x", f"{of_floor:.0%} of bandwidth", source))
    for codes, row in exact.get("batched", {}).items():
        speed = row.get("polymodal_speed_vs_faiss", row["faiss_ms"] / row["polymodal_ms"])
        out.append((f"exact search 1M x {exact.get('dim', 512)}, {codes} codes, {row['queries']} queries at once "
                    "(ms per query)", f"{row['polymodal_ms']:g}", f"faiss {row['faiss_ms']:g}", f"{speed:.2f}x", "",
                    source))
    for codes, by_share in exact.get("filtered", {}).items():
        for share, row in by_share.items():
            out.append((f"exact search 1M x {exact.get('dim', 512)}, {codes} codes, one query, {float(share):.0%} of "
                        "items allowed (ms)", f"{row['polymodal_ms']:g}", f"faiss IDSelectorBatch {row['faiss_ms']:g}",
                        f"{row['polymodal_speed_vs_faiss']:.2f}x", "", source))
    at_target = results.get("hnsw_text_to_image", {}).get("at_recall_0.95", {})
    if "polymodal" in at_target and "hnswlib" in at_target:
        ours_qps, peer_qps = at_target["polymodal"]["qps"], at_target["hnswlib"]["qps"]
        out.append(("HNSW text→image queries/s at recall@10 ≥ 0.95", f"{ours_qps:,.0f}", f"hnswlib {peer_qps:,.0f}",
                    f"{ours_qps / peer_qps:.2f}x", "", source))
    for name, codes in (("polymodal_fp32", "fp32"), ("polymodal_int8", "int8")):  # runs from 2026-12-05 on
        if at_target.get(name) and at_target.get("hnswlib"):
            qps, peer_qps = at_target[name]["qps"], at_target["hnswlib"]["qps"]
            out.append((f"HNSW text→image queries/s at recall@10 ≥ 0.95, {codes} vectors in the graph",
                        f"{qps:,.0f}", f"hnswlib {peer_qps:,.0f}", f"{qps / peer_qps:.2f}x", "", source))
    return out


def encoder_rows(record: dict[str, Any], fp32_ceiling: float | None) -> list[Row]:
    """Embedding throughput of our encoders as the command line runs them (fp32, and int8)
    against transformers' CLIPModel with the same weights and glibc's default allocator;
    fp32 as a share of the matmul ceiling. Where the run also timed the peer with our
    allocator setting, the peer cell gives that figure too."""
    out: list[Row] = []
    for arch, result in record.get("results", {}).get("architectures", {}).items():
        for modality in ("image", "text"):
            per_item = result[modality].get("gflop_per_item")
            for batch in (1, 64):
                row = result[modality].get(f"batch_{batch}")
                if not row:
                    continue
                tuned = "_tuned" if "fp32_tuned_per_s" in row else ""
                fp32, int8 = row[f"fp32{tuned}_per_s"], row[f"int8{tuned}_per_s"]
                share = f"{per_item * fp32 / fp32_ceiling:.0%} of fp32 matmul" if per_item and fp32_ceiling else ""
                peer = f"transformers {row['peer_per_s']:g}"
                if tuned:
                    peer += f" ({row['peer_tuned_per_s']:g} with our allocator setting)"
                # bf16 autocast is timed with glibc's defaults only, like the peer it is divided by
                names, rates, ratios = ["fp32"], [f"{fp32:g}"], [f"{row[f'fp32{tuned}_over_peer']:.2f}x"]
                if "bf16_per_s" in row:
                    names.append("bf16")
                    rates.append(f"{row['bf16_per_s']:g}")
                    ratios.append(f"{row['bf16_over_peer']:.2f}x")
                names.append("int8")
                rates.append(f"{int8:g}")
                ratios.append(f"{row[f'int8{tuned}_over_peer']:.2f}x")
                out.append((f"{arch} {modality}s embedded/s, batch {batch} ({'; '.join(names)})", "; ".join(rates),
                            peer, "; ".join(ratios), share, _source(record)))
    return out


def gpu_encoder_rows(record: dict[str, Any], ceilings: dict[str, Any]) -> list[Row]:
    """On a GPU: our encoders in fp32 and under bf16 autocast against the peer in the same
    precision, at the largest batch; bf16 as a share of the GPU's bf16 matmul rate."""
    out: list[Row] = []
    gpu = record.get("machine", {}).get("cuda") or "GPU"
    for arch, result in record.get("results", {}).get("architectures", {}).items():
        for modality in ("image", "text"):
            batches = sorted(int(k.split("_")[1]) for k in result[modality] if k.startswith("batch_"))
            if not batches:
                continue
            row = result[modality][f"batch_{batches[-1]}"]
            per_item, bf16_ceiling = result[modality].get("gflop_per_item"), ceilings.get("bf16_gflops")
            share = f"{per_item * row['bf16_per_s'] / bf16_ceiling:.0%} of bf16 matmul" \
                if per_item and bf16_ceiling else ""
            out.append((f"{gpu}: {arch} {modality}s embedded/s, batch {batches[-1]} (fp32; bf16)",
                        f"{row['fp32_per_s']:,.0f}; {row['bf16_per_s']:,.0f}",
                        f"transformers {row['peer_per_s']:,.0f}; {row['peer_bf16_per_s']:,.0f}",
                        f"{row['fp32_over_peer']:.2f}x; {row['bf16_over_peer_bf16']:.2f}x", share, _source(record)))
    return out


def train_step_rows(record: dict[str, Any]) -> list[Row]:
    """Training-step throughput (pairs/s) against transformers' CLIPModel with the same loss,
    batch and optimiser: on the CPU as the command line runs (allocator setting) against the
    peer as a transformers user runs it; on a GPU in fp32 and bf16."""
    out: list[Row] = []
    gpu = record.get("machine", {}).get("cuda")
    for arch, runs in record.get("results", {}).get("architectures", {}).items():
        for precision, run in runs.items():
            ours = "ours_tuned" if "ours_tuned_pairs_per_s" in run else "ours"
            label = f"{gpu}: " if gpu else ""
            cells = [f"{run[f'{ours}_pairs_per_s']:,.1f}"]
            ratios = [f"{run[f'{ours}_over_peer']:.2f}x"]
            variants = "fp32" if precision == "fp32" else "bf16 autocast"
            compiled = f"{ours.replace('ours', 'ours_compiled')}"
            if f"{compiled}_pairs_per_s" in run:
                cells.append(f"{run[f'{compiled}_pairs_per_s']:,.1f}")
                ratios.append(f"{run[f'{compiled}_over_peer']:.2f}x")
                variants += "; torch.compile"
            out.append((f"{label}train step pairs/s, {arch}, batch {run['batch']} ({variants})", "; ".join(cells),
                        f"transformers {run['peer_pairs_per_s']:,.1f}", "; ".join(ratios), "", _source(record)))
    return out


def text_bulk_rows(record: dict[str, Any]) -> list[Row]:
    """Many captions at once: ours batched by token length against the peer in the
    captions' own order, both with the same tokens and weights."""
    return [(f"{arch} texts embedded/s, {run['count']:,} captions in batches of {run['batch']}",
             f"{run['ours_texts_per_s']:g}", f"transformers {run['peer_texts_per_s']:g}",
             f"{run['ours_over_peer']:.2f}x", "", _source(record))
            for arch, run in record.get("results", {}).get("architectures", {}).items()]


def ingest_rows(record: dict[str, Any]) -> list[Row]:
    """`polymodal index update` on a folder of JPEGs with its default decoding workers (2
    before the default depended on the machine), as a share of the encoder's own
    throughput on the decoded images (the goal: 90%)."""
    out: list[Row] = []
    results = record.get("results", {})
    workers = results.get("default_workers", 2)
    for preset, result in results.get("models", {}).items():
        run = result.get(f"workers_{workers}")
        if not run:
            continue
        out.append((f"index {result['count']} JPEGs, images/s ({preset}, {workers} workers)",
                    f"{run['images_per_s']:g}", f"encoder alone {result['encoder_alone_images_per_s']:g}",
                    f"{run['of_encoder']:.2f}x", "", _source(record)))
    return out


def preprocess_rows(record: dict[str, Any]) -> list[Row]:
    """Per-image preprocessing on one core: the resize against Pillow's, and a JPEG to the
    model's tensor against transformers' CLIPImageProcessor (ratio: their time over ours)."""
    out: list[Row] = []
    for source, result in record.get("results", {}).get("sources", {}).items():
        for size, run in result.get("sizes", {}).items():
            out.append((f"resize {source} JPEGs to {size} px (µs/image)", f"{run['ours_resize_us']:g}",
                        f"Pillow {run['pillow_resize_us']:g}", f"{run['resize_over_pillow']:.2f}x", "",
                        _source(record)))
            out.append((f"JPEG to tensor, {source} to {size} px (µs/image)", f"{run['ours_end_to_end_us']:g}",
                        f"CLIPImageProcessor {run['peer_end_to_end_us']:g}", f"{run['end_to_end_over_peer']:.2f}x",
                        "", _source(record)))
    return out


def _source(record: dict[str, Any]) -> str:
    return f"{record.get('benchmark', '?')}.json, {record.get('commit', '?')}, {str(record.get('date', '?'))[:10]}"


# The table's order: by result file, then as `rows` gives them.
ORDER = ("search", "search_exact", "search_hnsw", "serve_load", "encoders", "text_bulk", "train_step", "ingest",
         "preprocess",
         "encoders-cuda", "train_step-cuda", "ceilings", "ceilings-cuda")


def table(found: dict[str, dict[str, Any]], previous: str = "") -> str:
    """The table from `found`, keeping the rows of `previous` (a table this function wrote)
    whose result file is not in `found`: bench/results/ is not committed, so a fresh
    checkout that reruns one benchmark must not drop the others' published rows."""
    kept = [row for row in parse_rows(previous) if _stem(row) not in found and not _superseded(row, found)]
    ordered = sorted(rows(found) + kept, key=lambda row: ORDER.index(_stem(row)) if _stem(row) in ORDER else len(ORDER))
    lines = ["| figure | polymodal | peer (same run) | ratio | of the ceiling | result file, commit, date |",
             "|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in ordered]
    return "\n".join(lines)


def parse_rows(markdown_table: str) -> list[Row]:
    """The data rows of a table that `table` wrote."""
    out: list[Row] = []
    for line in markdown_table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        if len(cells) == 6 and cells[0] != "figure" and not cells[0].startswith("---"):
            out.append((cells[0], cells[1], cells[2], cells[3], cells[4], cells[5]))
    return out


#: result files that replaced an older one: its kept rows go once the new file exists
SUPERSEDES = {"search_exact": "search", "search_hnsw": "search"}


def _superseded(row: Row, found: dict[str, dict[str, Any]]) -> bool:
    """A kept row of the combined search.json whose figure a newer split file now gives
    (the exact-search rows from search_exact.json, the HNSW rows from search_hnsw.json)."""
    stem = _stem(row)
    return any(old == stem and new in found and any(r[0] == row[0] for r in rows({new: found[new]}))
               for new, old in SUPERSEDES.items())


def _stem(row: Row) -> str:
    """The result file a row came from ("search" for "search.json, abc1234, 2026-11-23")."""
    return row[5].split(".json")[0]


def current_table(markdown: str) -> str:
    if BEGIN not in markdown or END not in markdown:
        return ""
    return markdown.split(BEGIN, 1)[1].split(END, 1)[0]


def rewrite(markdown: str, new_table: str) -> str:
    """`markdown` with the text between the markers replaced (markers appended if absent)."""
    if BEGIN not in markdown or END not in markdown:
        return markdown.rstrip("\n") + f"\n\n## Summary\n\n{BEGIN}\n{new_table}\n{END}\n"
    head, rest = markdown.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{new_table}\n{END}{tail}"


def main() -> None:
    markdown = BENCHMARKS.read_text()
    BENCHMARKS.write_text(rewrite(markdown, table(load(), current_table(markdown))))
    print(f"rewrote the summary table of {BENCHMARKS}")


if __name__ == "__main__":
    main()
