"""The BENCHMARKS.md summary table: ratios against the peer and the ceiling, computed from
result files, and a rewrite that touches only the text between its markers."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import summary  # noqa: E402 - bench/ is not a package


def record(name: str, results: dict) -> dict:
    return {"benchmark": name, "commit": "abc1234", "date": "2026-11-23T01:02:03+00:00", "results": results}


def test_rows_give_ratios_against_the_peer_and_the_ceiling() -> None:
    found = {
        "search": record("search", {
            "exact_1m": {"dim": 512, "int8": {"polymodal_ms": 50.0, "faiss_ms": 100.0, "floor_ms": 25.0}},
            "hnsw_text_to_image": {"at_recall_0.95": {"polymodal": {"qps": 900.0}, "hnswlib": {"qps": 1000.0},
                                                      "polymodal_int8": {"qps": 1500.0}}}}),
        "ceilings": record("ceilings", {"fp32_gflops": 200.0, "read_bandwidth_gbs": 20.0}),
    }
    rows = summary.rows(found)
    int8 = next(r for r in rows if "int8" in r[0])
    assert int8[1:5] == ("50", "faiss 100", "2.00x", "50% of bandwidth")  # twice as fast; half the floor's speed
    hnsw = next(r for r in rows if r[0].startswith("HNSW"))
    assert hnsw[3] == "0.90x" and hnsw[5] == "search.json, abc1234, 2026-11-23"
    hnsw_int8 = next(r for r in rows if r[0].startswith("HNSW") and "int8" in r[0])
    assert hnsw_int8[1:4] == ("1,500", "hnswlib 1,000", "1.50x")
    assert any(r[0] == "ceiling: memory read bandwidth (GB/s)" and r[1] == "20" for r in rows)


def test_encoder_rows_compare_with_transformers_and_the_matmul_ceiling() -> None:
    batch = {"peer_per_s": 100.0, "fp32_per_s": 150.0, "int8_per_s": 200.0, "fp32_over_peer": 1.5,
             "int8_over_peer": 2.0}
    found = {
        "encoders": record("encoders", {"architectures": {"tiny-64": {
            "image": {"gflop_per_item": 0.5, "batch_64": batch}, "text": {"gflop_per_item": 0.1}}}}),
        "ceilings": record("ceilings", {"fp32_gflops": 300.0}),
    }
    (row,) = [r for r in summary.rows(found) if r[0].startswith("tiny-64")]
    assert row[0] == "tiny-64 images embedded/s, batch 64 (fp32; int8)"
    assert row[1:5] == ("150; 200", "transformers 100", "1.50x; 2.00x", "25% of fp32 matmul")  # 75 of 300 GFLOP/s


def test_encoder_rows_show_our_tuned_allocator_against_the_peer_as_it_ships() -> None:
    batch = {"peer_per_s": 100.0, "fp32_per_s": 110.0, "int8_per_s": 180.0, "peer_tuned_per_s": 120.0,
             "fp32_tuned_per_s": 140.0, "int8_tuned_per_s": 210.0, "fp32_tuned_over_peer": 1.4,
             "int8_tuned_over_peer": 2.1}
    found = {"encoders": record("encoders", {"architectures": {"tiny-64": {"image": {"batch_1": batch},
                                                                           "text": {}}}})}
    (row,) = summary.rows(found)
    assert row[1:4] == ("140; 210", "transformers 100 (120 with our allocator setting)", "1.40x; 2.10x")
    batch.update(bf16_per_s=190.0, bf16_over_peer=1.9)  # bf16 autocast, where the run timed it
    (row,) = summary.rows(found)
    assert row[0] == "tiny-64 images embedded/s, batch 1 (fp32; bf16; int8)"
    assert row[1:4] == ("140; 190; 210", "transformers 100 (120 with our allocator setting)", "1.40x; 1.90x; 2.10x")


def test_gpu_train_step_and_ingest_rows() -> None:
    gpu_batch = {"peer_per_s": 1000.0, "fp32_per_s": 1100.0, "bf16_per_s": 5000.0, "peer_bf16_per_s": 4000.0,
                 "fp32_over_peer": 1.1, "bf16_over_peer_bf16": 1.25}
    encoders = record("encoders-cuda", {"architectures": {"vit": {
        "image": {"gflop_per_item": 10.0, "batch_64": {}, "batch_256": gpu_batch}, "text": {}}}})
    encoders["machine"] = {"cuda": "H100"}
    steps = record("train_step", {"architectures": {"vit": {"fp32": {
        "batch": 32, "peer_pairs_per_s": 10.0, "ours_tuned_pairs_per_s": 14.0, "ours_tuned_over_peer": 1.4,
        "ours_compiled_tuned_pairs_per_s": 16.0, "ours_compiled_tuned_over_peer": 1.6}}}})
    ingest = record("ingest", {"models": {"vit": {"count": 256, "encoder_alone_images_per_s": 20.0,
                                                  "workers_2": {"images_per_s": 19.0, "of_encoder": 0.95}}}})
    bulk = record("text_bulk", {"architectures": {"vit": {"count": 512, "batch": 256, "ours_texts_per_s": 300.0,
                                                           "peer_texts_per_s": 150.0, "ours_over_peer": 2.0}}})
    gpu_ceilings = record("ceilings-cuda", {"bf16_gflops": 100_000.0, "device": "H100"})
    found = {"encoders-cuda": encoders, "text_bulk": bulk, "ceilings-cuda": gpu_ceilings, "train_step": steps,
             "ingest": ingest}
    rows = {r[0]: r for r in summary.rows(found)}
    gpu = rows["H100: vit images embedded/s, batch 256 (fp32; bf16)"]  # the largest batch
    assert gpu[1:5] == ("1,100; 5,000", "transformers 1,000; 4,000", "1.10x; 1.25x", "50% of bf16 matmul")
    step = rows["train step pairs/s, vit, batch 32 (fp32; torch.compile)"]
    assert step[1:4] == ("14.0; 16.0", "transformers 10.0", "1.40x; 1.60x")
    assert rows["index 256 JPEGs, images/s (vit, 2 workers)"][1:4] == ("19", "encoder alone 20", "0.95x")
    assert "ceiling, H100: matmul 8192², bf16 (GFLOP/s)" in rows
    assert rows["vit texts embedded/s, 512 captions in batches of 256"][1:4] == ("300", "transformers 150", "2.00x")


def test_filtered_exact_search_rows() -> None:
    exact = record("search_exact", {"exact_1m": {"dim": 512, "filtered": {"fp32": {"0.05": {
        "polymodal_ms": 8.8, "faiss_ms": 23.8, "polymodal_speed_vs_faiss": 2.71}}}}})
    rows = {r[0]: r for r in summary.rows({"search_exact": exact})}
    row = rows["exact search 1M x 512, fp32 codes, one query, 5% of items allowed (ms)"]
    assert row[1:4] == ("8.8", "faiss IDSelectorBatch 23.8", "2.71x")


def test_ingest_rows_show_the_default_workers_and_preprocess_rows_the_peers() -> None:
    ingest = record("ingest", {"default_workers": 0, "models": {"vit": {
        "count": 256, "encoder_alone_images_per_s": 20.0, "workers_0": {"images_per_s": 18.0, "of_encoder": 0.9},
        "workers_2": {"images_per_s": 19.0, "of_encoder": 0.95}}}})
    preprocess = record("preprocess", {"sources": {"flickr-128": {"sizes": {"64": {
        "ours_resize_us": 50.0, "pillow_resize_us": 170.0, "resize_over_pillow": 3.4,
        "ours_end_to_end_us": 280.0, "peer_end_to_end_us": 573.0, "end_to_end_over_peer": 2.05}}}}})
    rows = {r[0]: r for r in summary.rows({"ingest": ingest, "preprocess": preprocess})}
    assert rows["index 256 JPEGs, images/s (vit, 0 workers)"][1:4] == ("18", "encoder alone 20", "0.90x")
    assert "index 256 JPEGs, images/s (vit, 2 workers)" not in rows
    assert rows["resize flickr-128 JPEGs to 64 px (µs/image)"][1:4] == ("50", "Pillow 170", "3.40x")
    assert rows["JPEG to tensor, flickr-128 to 64 px (µs/image)"][1:4] == ("280", "CLIPImageProcessor 573", "2.05x")


def test_the_rewrite_replaces_only_the_marked_table() -> None:
    before = f"# Benchmarks\n\nintro\n\n{summary.BEGIN}\nold table\n{summary.END}\n\n## Later section\nkept\n"
    after = summary.rewrite(before, "| new |")
    assert after == f"# Benchmarks\n\nintro\n\n{summary.BEGIN}\n| new |\n{summary.END}\n\n## Later section\nkept\n"
    appended = summary.rewrite("# Benchmarks\n", "| t |")
    assert appended.startswith("# Benchmarks\n") and appended.endswith(f"{summary.BEGIN}\n| t |\n{summary.END}\n")
    assert summary.rewrite(appended, "| u |").count(summary.BEGIN) == 1


def test_rows_of_benchmarks_without_results_here_are_kept() -> None:
    """bench/results/ is not committed: rerunning one benchmark in a fresh checkout keeps the
    published rows of the others, and replaces its own."""
    old_serve = ("serve: 1 clients (requests/s; p50 / p99 ms)", "30; 1 / 2", "", "", "",
                 "serve_load.json, 1111111, 2026-11-01")
    old_exact = ("exact search 1M x 512, fp32 codes, one query (ms, lower is better)", "99", "faiss 200", "2.02x",
                 "50% of bandwidth", "search_exact.json, 1111111, 2026-11-01")
    previous = summary.table({}, "\n".join("| " + " | ".join(r) + " |" for r in (old_exact, old_serve)))
    assert summary.parse_rows(previous) == [old_exact, old_serve]
    found = {"search_exact": record("search_exact", {"exact_1m": {"dim": 512, "fp32": {
        "polymodal_ms": 50.0, "faiss_ms": 100.0, "floor_ms": 45.0}}})}
    rows = summary.parse_rows(summary.table(found, previous))
    assert [r[5] for r in rows] == ["search_exact.json, abc1234, 2026-11-23", old_serve[5]]  # new exact, then serve
    assert rows[0][1:5] == ("50", "faiss 100", "2.00x", "90% of bandwidth") and rows[1] == old_serve


def test_exact_rows_use_per_round_ratios_where_the_run_recorded_them() -> None:
    """A shared machine's bandwidth moves between rounds: the floor timed beside each query
    gives the share of the floor, not the ratio of the two medians."""
    fp32 = {"polymodal_ms": 40.0, "faiss_ms": 100.0, "floor_ms": 50.0, "read_gbs": 40.0,
            "polymodal_vs_floor": 1.25, "polymodal_speed_vs_faiss": 3.0}
    batched = {"fp32": {"queries": 64, "polymodal_ms": 2.0, "faiss_ms": 5.0, "polymodal_speed_vs_faiss": 2.4}}
    found = {"search_exact": record("search_exact", {"exact_1m": {"dim": 512, "fp32": fp32, "batched": batched}})}
    one, many = summary.rows(found)
    assert one[1:5] == ("40", "faiss 100", "3.00x", "80% of bandwidth")  # not 50/40 = 125%
    assert many[0] == "exact search 1M x 512, fp32 codes, 64 queries at once (ms per query)"
    assert many[1:4] == ("2", "faiss 5", "2.40x")


def test_a_split_result_file_replaces_the_rows_of_the_combined_one_it_supersedes() -> None:
    """search.json (both parts, older runs) gave way to search_exact.json and
    search_hnsw.json: a new HNSW run drops the old HNSW row and keeps the old exact rows
    that nothing newer gives."""
    old_hnsw = ("HNSW text→image queries/s at recall@10 ≥ 0.95", "20,014", "hnswlib 20,141", "0.99x", "",
                "search.json, 1111111, 2026-11-01")
    old_binary = ("exact search 1M, binary backend (ms)", "3.9", "faiss 3.8", "0.99x", "",
                  "search.json, 1111111, 2026-11-01")
    previous = "\n".join("| " + " | ".join(r) + " |" for r in (old_hnsw, old_binary))
    found = {"search_hnsw": record("search_hnsw", {"hnsw_text_to_image": {"at_recall_0.95": {
        "polymodal": {"qps": 900.0}, "hnswlib": {"qps": 1000.0}}}})}
    rows = summary.parse_rows(summary.table(found, previous))
    hnsw = [r for r in rows if r[0].startswith("HNSW")]
    assert [r[5] for r in hnsw] == ["search_hnsw.json, abc1234, 2026-11-23"]
    assert old_binary in rows
