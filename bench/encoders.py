"""Our encoders against transformers' CLIPModel with identical weights and thread count, in
one run: image and text embedding throughput at batch 1 and 64, and the largest difference
between the two models' embeddings.

Architectures: ViT-B/32 (transformers' default CLIPConfig: 224 px, 12 + 12 layers) and
"tiny-64", the sizes of our vit-tiny-64 preset (64 px, 8 px patches, 6 layers of 192; a
4-layer text transformer of 256) in CLIP's layout. Both are randomly initialised (nothing
is downloaded) and converted to polymodal with the converter (polymodal/convert.py), so
both sides compute the same function. Variants of ours, each against the same peer run:

- fp32: the reference path (tolerance 1e-4 against the peer's embeddings), with its linear
  layers on oneDNN's packed weights as polymodal runs them (polymodal/models/linear.py);
- fp32_mkl: the same with torch's own products (MKL), to show what the packing gives;
- bf16: autocast to bfloat16 (agreement reported as the cosine to fp32);
- int8: dynamic int8 quantisation of every Linear layer (torch.ao; cosine to fp32; CPU only).

On the CPU every variant is timed with glibc's default allocator (as a transformers user
runs), and the peer, fp32 and int8 also with the allocator setting polymodal's command line
applies (polymodal.runtime.tune_allocator; "_tuned" in the results): the peer benefits from
it too, so both comparisons are reported. Each setting is timed in child processes of its
own (glibc cannot undo the setting within a process), three rounds alternating between the
two; within a process the variants are timed in interleaved rounds
(common.interleaved_rates), so a slow spell of the machine hits each alike.

On a GPU (`--device cuda`) the peer also runs under bf16 autocast, and our bf16 is compared
with that; the result goes to encoders-cuda.json.

Text batches are captions of 8-20 tokens padded to the longest, as both libraries pad.

    python bench/encoders.py                   # writes bench/results/encoders.json
    python bench/encoders.py --arch tiny-64    # one architecture
    python bench/encoders.py --device cuda     # on a GPU: writes bench/results/encoders-cuda.json
    python bench/encoders.py --compile         # also torch.compile'd encoders
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from common import (
    THREADS,
    add_child_arguments,
    finish_child,
    interleaved_rates,
    parse_names,
    rates_in_child_processes,
    start_child,
    write_result,
)
from torch import nn

from polymodal.checkpoint import load_state
from polymodal.convert import config_from_hf, remap_clip_state
from polymodal.inference import quantise_int8
from polymodal.models import linear as packed_linear
from polymodal.models.dual_encoder import DualEncoder

BATCHES = {"cpu": (1, 64), "cuda": (1, 64, 256)}
#: timed a second time on the CPU with polymodal.runtime.tune_allocator() on
TUNED_VARIANTS = ("peer", "fp32", "fp32_mkl", "int8")
FP32_TOLERANCE = 1e-4


def clip_configs() -> dict[str, Any]:
    from transformers import CLIPConfig

    return {
        "clip-vit-b-32": CLIPConfig(),
        "tiny-64": CLIPConfig(
            text_config=dict(vocab_size=8192, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                             num_attention_heads=4, max_position_embeddings=32, bos_token_id=8190,
                             eos_token_id=8191),
            vision_config=dict(hidden_size=192, intermediate_size=768, num_hidden_layers=6, num_attention_heads=3,
                               image_size=64, patch_size=8),
            projection_dim=256),
    }


def build_pair(config: Any, device: str = "cpu") -> tuple[nn.Module, DualEncoder]:
    """transformers' CLIPModel with random weights, and ours holding the very same weights."""
    from transformers import CLIPModel

    torch.manual_seed(0)
    peer = CLIPModel(config).eval()
    ours = DualEncoder(config_from_hf(config.to_dict(), None)).eval()
    load_state(ours, remap_clip_state(peer.state_dict()), "transformers CLIPModel")
    return peer.to(device), ours.to(device)


def caption_batch(batch: int, vocab: int, context: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of captions of 8-20 tokens ending in the end token (the vocabulary's last
    id, where CLIP pools), padded with 0 to the longest."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(8, min(21, context + 1), (batch,), generator=g)
    width = int(lengths.max())
    ids = torch.zeros(batch, width, dtype=torch.long)
    mask = torch.zeros(batch, width, dtype=torch.long)
    for row, n in enumerate(lengths.tolist()):
        ids[row, :n] = torch.randint(3, vocab - 2, (n,), generator=g)
        ids[row, n - 1] = vocab - 1
        mask[row, :n] = 1
    return ids, mask


def peer_features(output: object) -> torch.Tensor:
    return getattr(output, "pooler_output", output)  # transformers 5 returns a ModelOutput


def quantised(model: DualEncoder) -> DualEncoder:
    """A copy with int8 Linear layers, as `--precision int8` makes it."""
    return quantise_int8(copy.deepcopy(model))


def measure(name: str, config: Any, device: str = "cpu", compile: bool = False) -> dict[str, Any]:
    """Agreement with the peer, FLOPs per item, and every variant's throughput. On the CPU
    the timings run in child processes, one allocator setting each (common.ALLOCATORS)."""
    out = agreement(config, device)
    if device == "cpu":
        argv = ["--arch", name, *(["--compile"] if compile else [])]
        rates = rates_in_child_processes("encoders.py", argv, {"system": [], "tuned": list(TUNED_VARIANTS)})
    else:
        rates = timings(config, device, compile)
    for key, rate in rates.items():
        modality, batch = key.split("/")
        row = {f"{v}_per_s": round(r, 1) for v, r in rate.items()}
        row.update({f"{v}_over_peer": round(rate[v] / rate["peer"], 2)
                    for v in ("fp32", "fp32_mkl", "bf16", "int8", "compiled", "compiled_bf16", "fp32_tuned",
                              "fp32_mkl_tuned", "int8_tuned")
                    if v in rate})
        if "peer_tuned" in rate:
            row["fp32_tuned_over_peer_tuned"] = round(rate["fp32_tuned"] / rate["peer_tuned"], 2)
        if "peer_bf16" in rate:
            row["bf16_over_peer_bf16"] = round(rate["bf16"] / rate["peer_bf16"], 2)
        out[modality][f"batch_{batch}"] = row
        print(name, modality, batch, row, flush=True)
    return out


def _inputs(config: Any, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random images and captions, as many as the largest batch."""
    largest = max(BATCHES[_kind(device)])
    size = config.vision_config.image_size
    pixels = torch.randn(largest, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    ids, mask = (t.to(device) for t in caption_batch(largest, config.text_config.vocab_size,
                                                         config.text_config.max_position_embeddings))
    return pixels, ids, mask


def agreement(config: Any, device: str) -> dict[str, Any]:
    """How far each variant's embeddings are from the peer's (fp32) or from our fp32
    (bf16, int8) at batch 64, and the FLOPs of one image and one caption."""
    peer, ours = build_pair(config, device)
    int8 = quantised(ours) if device == "cpu" else None  # torch.ao's dynamic int8 kernels are CPU kernels
    pixels, ids, mask = _inputs(config, device)
    p64, i64, m64 = pixels[:64], ids[:64], mask[:64]
    out: dict[str, Any] = {"image_size": config.vision_config.image_size, "parity": {}, "image": {}, "text": {}}
    with torch.inference_mode():
        reference_image = peer_features(peer.get_image_features(pixel_values=p64))
        reference_text = peer_features(peer.get_text_features(input_ids=i64, attention_mask=m64))
        image = {"fp32": ours.encode_image(p64, normalize=False)}
        text = {"fp32": ours.encode_text(i64, m64, normalize=False)}
        if int8 is not None:
            image["int8"] = int8.encode_image(p64, normalize=False)
            text["int8"] = int8.encode_text(i64, m64, normalize=False)
        with torch.autocast(_kind(device), dtype=torch.bfloat16):
            image["bf16"] = ours.encode_image(p64, normalize=False).float()
            text["bf16"] = ours.encode_text(i64, m64, normalize=False).float()
    for modality, got, expected in (("image", image, reference_image), ("text", text, reference_text)):
        parity = {"fp32_max_abs_diff": float((got["fp32"] - expected).abs().max()),
                  "fp32_within_tolerance": bool((got["fp32"] - expected).abs().max() <= FP32_TOLERANCE)}
        for variant in ("bf16", "int8") if int8 is not None else ("bf16",):
            parity[f"{variant}_min_cosine_to_fp32"] = float(F.cosine_similarity(got[variant], got["fp32"]).min())
            parity[f"{variant}_max_abs_diff"] = float((got[variant] - got["fp32"]).abs().max())
        out["parity"][modality] = parity
    # FLOPs of one item, to read throughput as a share of the matmul ceiling (counted with
    # autograd on: torch's module tracker fails under no_grad and inference_mode)
    with packed_linear.disabled():  # the counter knows aten's products, not oneDNN's op
        out["image"]["gflop_per_item"] = gflop(lambda: ours.encode_image(pixels[:8])) / 8
        out["text"]["gflop_per_item"] = gflop(lambda: ours.encode_text(ids[:8], mask[:8])) / 8
    return out


def timings(config: Any, device: str, compile: bool = False, only: Sequence[str] = (),
            rounds: int = 3) -> dict[str, dict[str, float]]:
    """{"image/64": {variant: items/s}, ...}: the variants (all, or `only` these) timed in
    interleaved rounds at each batch size."""
    peer, ours = build_pair(config, device)
    # torch.compile'd encoders (inductor), timed after their first call compiled them
    encode_image = torch.compile(ours.encode_image) if compile else None
    encode_text = torch.compile(ours.encode_text) if compile else None
    int8 = quantised(ours) if device == "cpu" else None
    pixels, ids, mask = _inputs(config, device)
    out: dict[str, dict[str, float]] = {}
    for batch in BATCHES[_kind(device)]:
        p, i, m = pixels[:batch], ids[:batch], mask[:batch]
        i = i[:, : int(m.sum(dim=1).max())]  # padded to the longest of this batch
        m = m[:, : i.shape[1]]
        runs: dict[str, dict[str, Callable[[], object]]] = {
            "image": {
                "peer": lambda p=p: peer.get_image_features(pixel_values=p),
                "fp32": lambda p=p: ours.encode_image(p),
                "fp32_mkl": lambda p=p: _mkl(lambda: ours.encode_image(p)),
                "bf16": lambda p=p: _bf16(device, lambda: ours.encode_image(p)),
            },
            "text": {
                "peer": lambda i=i, m=m: peer.get_text_features(input_ids=i, attention_mask=m),
                "fp32": lambda i=i, m=m: ours.encode_text(i, m),
                "fp32_mkl": lambda i=i, m=m: _mkl(lambda: ours.encode_text(i, m)),
                "bf16": lambda i=i, m=m: _bf16(device, lambda: ours.encode_text(i, m)),
            },
        }
        if int8 is not None:
            runs["image"]["int8"] = lambda p=p: int8.encode_image(p)
            runs["text"]["int8"] = lambda i=i, m=m: int8.encode_text(i, m)
        if encode_image is not None and encode_text is not None:
            runs["image"]["compiled"] = lambda p=p: encode_image(p)
            runs["text"]["compiled"] = lambda i=i, m=m: encode_text(i, m)
            runs["image"]["compiled_bf16"] = lambda p=p: _bf16(device, lambda: encode_image(p))
            runs["text"]["compiled_bf16"] = lambda i=i, m=m: _bf16(device, lambda: encode_text(i, m))
        if int8 is None:  # on a GPU, bf16 is compared with the peer under the same autocast
            runs["image"]["peer_bf16"] = lambda p=p: _bf16(device, lambda: peer.get_image_features(pixel_values=p))
            runs["text"]["peer_bf16"] = lambda i=i, m=m: _bf16(
                device, lambda: peer.get_text_features(input_ids=i, attention_mask=m))
        for modality, variants in runs.items():
            chosen = {v: run for v, run in variants.items() if not only or v in only}
            with torch.inference_mode():
                out[f"{modality}/{batch}"] = interleaved_rates(chosen, batch, rounds=rounds, device=device)
    return out


def gflop(run: Callable[[], object]) -> float:
    """Floating-point operations of one call (matrix products and attention, as torch counts them)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops() / 1e9


def _mkl(run: Callable[[], torch.Tensor]) -> torch.Tensor:
    """Our fp32 encoder with torch's own products (MKL) instead of oneDNN's packed ones."""
    with packed_linear.disabled():
        return run()


def _bf16(device: str, run: Callable[[], torch.Tensor]) -> torch.Tensor:
    with torch.autocast(_kind(device), dtype=torch.bfloat16):
        return run()


def _kind(device: str) -> str:
    return "cuda" if device.startswith("cuda") else "cpu"


def main() -> None:
    configs = clip_configs()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default=",".join(configs), help=f"Comma-separated, from: {', '.join(configs)}.")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda on a machine with a GPU.")
    parser.add_argument("--compile", action="store_true", help="Also time torch.compile'd encoders (fp32 and bf16).")
    add_child_arguments(parser)
    args = parser.parse_args()
    if args.device != "cpu" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch sees no GPU here")
    archs = parse_names(parser, args.arch, configs)
    torch.set_num_threads(THREADS)
    if start_child(args):  # one allocator's timings, for measure() in the parent process
        (name,) = archs
        only = [v for v in args.variants.split(",") if v]
        finish_child(args, timings(configs[name], args.device, args.compile, only, rounds=1))
        return
    results = {"threads": THREADS, "device": args.device, "fp32_tolerance": FP32_TOLERANCE,
               "peer": "transformers CLIPModel.get_image_features / get_text_features (its default attention)",
               "architectures": {name: measure(name, configs[name], args.device, args.compile)
                                 for name in archs}}
    path = write_result("encoders" if args.device == "cpu" else "encoders-cuda", results)
    print(path.read_text())


if __name__ == "__main__":
    main()
