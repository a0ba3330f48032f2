"""Training-step throughput against transformers' CLIPModel trained with the same loss,
batch, optimiser and thread count, in one run.

One step = embed a batch of images and captions, CLIP's symmetric InfoNCE loss, backward,
AdamW. Ours is DualEncoder + polymodal.losses.ClipLoss; the peer is CLIPModel with
`return_loss=True` (the same loss: cross-entropy of logit_scale * image @ text.T in both
directions). Both start from identical weights (the converter) and use torch's fused AdamW
with the same settings (what both libraries' trainers build), so the figure is the models'
forward and backward, not the optimiser. Before timing, the two models' losses and gradients from the same weights are
compared (the largest gradient difference relative to the largest gradient is reported).

Architectures as in bench/encoders.py: ViT-B/32 (224 px, 12 + 12 layers) and tiny-64 (the
sizes of our vit-tiny-64 preset). On the CPU each step is timed with glibc's default
allocator, and again with the setting polymodal's command line applies ("_tuned";
polymodal.runtime.tune_allocator), which speeds the peer up too: each setting in child
processes of its own (glibc cannot undo it within a process), rounds alternating. On a
GPU (`--device cuda`), and on the CPU with `--bf16`, both also run under bf16 autocast; a
GPU's results go to train_step-cuda.json.

    python bench/train_step.py                       # writes bench/results/train_step.json
    python bench/train_step.py --arch tiny-64 --batch 128
    python bench/train_step.py --device cuda         # on a GPU
    python bench/train_step.py --compile             # also our step through torch.compile
    python bench/train_step.py --bf16                # also both steps under bf16 autocast
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

import torch
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
from encoders import build_pair, caption_batch, clip_configs
from torch import nn

from polymodal.losses import ClipLoss
from polymodal.models.dual_encoder import DualEncoder
from polymodal.train.optim import fused_adamw_applies

#: pairs per step by architecture and device: ViT-B/32 at 64 already takes seconds a step on 2 cores
BATCHES = {"cpu": {"clip-vit-b-32": 32, "tiny-64": 128}, "cuda": {"clip-vit-b-32": 256, "tiny-64": 1024}}
LR = 1e-4


def loss_functions(peer: nn.Module, ours: DualEncoder, pixels: torch.Tensor, ids: torch.Tensor,
                   mask: torch.Tensor, device: str, bf16: bool,
                   compile: bool = False) -> dict[str, Callable[[], torch.Tensor]]:
    """Each model's forward pass to its CLIP loss on the batch (and, with `compile`, ours
    through torch.compile as "ours_compiled")."""
    loss_fn = ClipLoss(gather=False)
    kind = "cuda" if device.startswith("cuda") else "cpu"

    def peer_loss() -> torch.Tensor:
        with torch.autocast(kind, dtype=torch.bfloat16, enabled=bf16):
            return peer(input_ids=ids, attention_mask=mask, pixel_values=pixels, return_loss=True).loss

    def our_loss() -> torch.Tensor:
        with torch.autocast(kind, dtype=torch.bfloat16, enabled=bf16):
            output = ours(pixels, ids, mask)
        return loss_fn(output)

    losses = {"peer": peer_loss, "ours": our_loss}
    if compile:
        compiled_loss = torch.compile(our_loss)
        losses["ours_compiled"] = lambda: compiled_loss()
    return losses


def training_step(model: nn.Module, loss: Callable[[], torch.Tensor]) -> Callable[[], None]:
    """zero_grad, loss, backward, AdamW step: the same optimiser and settings for both,
    torch's fused AdamW, which each library's trainer builds on this torch (transformers'
    Trainer defaults to adamw_torch_fused from torch 2.8; polymodal's build_optimizer)."""
    params = list(model.parameters())
    optimiser = torch.optim.AdamW(params, lr=LR, weight_decay=0.1, fused=fused_adamw_applies(params))

    def step() -> None:
        optimiser.zero_grad(set_to_none=True)
        loss().backward()
        optimiser.step()

    return step


def parity(peer: nn.Module, ours: DualEncoder, losses: dict[str, Callable[[], torch.Tensor]]) -> dict[str, float]:
    """From the same weights: the losses, and the largest difference between our gradients
    and the peer's (ours mapped to the peer's names) relative to the largest gradient."""
    from polymodal.convert import remap_clip_state

    peer.zero_grad(set_to_none=True)
    loss = losses["peer"]()
    loss.backward()
    out = {"peer_loss": float(loss.detach())}
    peer_grads = remap_clip_state({n: p.grad for n, p in peer.named_parameters() if p.grad is not None})
    for name in [n for n in losses if n != "peer"]:
        ours.zero_grad(set_to_none=True)
        loss = losses[name]()
        loss.backward()
        our_grads = {n: p.grad for n, p in ours.named_parameters() if p.grad is not None}
        shared = [n for n in peer_grads if n in our_grads]
        largest = max(float(peer_grads[n].abs().max()) for n in shared)
        diff = max(float((our_grads[n].float() - peer_grads[n].float()).abs().max()) for n in shared)
        value = float(loss.detach())
        out.update({f"{name}_loss": value, f"{name}_loss_abs_diff": abs(out["peer_loss"] - value),
                    f"{name}_gradients_compared": len(shared), f"{name}_max_grad_diff_over_max_grad": diff / largest})
    for model in (peer, ours):
        model.zero_grad(set_to_none=True)
    return out


def measure(name: str, config: Any, device: str, batch: int, bf16: bool, compile: bool = False) -> dict[str, Any]:
    """Agreement of losses and gradients, then each step's throughput. On the CPU the
    timings run in child processes, one allocator setting each (common.ALLOCATORS)."""
    peer, ours, losses = _setup(config, device, batch, bf16, compile)
    out: dict[str, Any] = {"batch": batch, "precision": "bf16 autocast" if bf16 else "fp32",
                           "parity": parity(peer, ours, losses)}
    if device == "cpu":
        argv = ["--arch", name, "--batch", str(batch), *(["--compile"] if compile else []),
                *(["--bf16"] if bf16 else [])]
        rates = rates_in_child_processes("train_step.py", argv, {"system": [], "tuned": []})["step"]
    else:
        rates = timings(config, device, batch, bf16, compile)
    out.update({f"{name}_pairs_per_s": round(rate, 1) for name, rate in rates.items()})
    out.update({f"{name}_over_peer": round(rate / rates["peer"], 2) for name, rate in rates.items() if name != "peer"})
    if "peer_tuned" in rates:
        out["ours_tuned_over_peer_tuned"] = round(rates["ours_tuned"] / rates["peer_tuned"], 2)
    print(name, out, flush=True)
    return out


def _setup(config: Any, device: str, batch: int, bf16: bool,
           compile: bool) -> tuple[nn.Module, DualEncoder, dict[str, Callable[[], torch.Tensor]]]:
    peer, ours = build_pair(config, device)
    peer.train()
    ours.train()
    size = config.vision_config.image_size
    pixels = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    ids, mask = (t.to(device) for t in caption_batch(batch, config.text_config.vocab_size,
                                                         config.text_config.max_position_embeddings))
    return peer, ours, loss_functions(peer, ours, pixels, ids, mask, device, bf16, compile)


def timings(config: Any, device: str, batch: int, bf16: bool, compile: bool = False, only: Sequence[str] = (),
            rounds: int = 3) -> dict[str, float]:
    """{step: pairs/s} for the peer's and our training steps (all, or `only` these), in
    interleaved rounds."""
    peer, ours, losses = _setup(config, device, batch, bf16, compile)
    steps = {name: training_step(peer if name == "peer" else ours, loss) for name, loss in losses.items()
             if not only or name in only}
    return interleaved_rates(steps, batch, rounds=rounds, seconds=3.0, device=device)


def main() -> None:
    configs = clip_configs()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default=",".join(configs), help=f"Comma-separated, from: {', '.join(configs)}.")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda on a machine with a GPU.")
    parser.add_argument("--batch", type=int, default=0, help="Pairs per step (default: by architecture and device).")
    parser.add_argument("--compile", action="store_true", help="Also time our step through torch.compile.")
    parser.add_argument("--bf16", action="store_true",
                        help="Also time both steps under bf16 autocast on the CPU (on a GPU they always are).")
    add_child_arguments(parser)
    args = parser.parse_args()
    kind = "cpu" if args.device == "cpu" else "cuda"
    if kind == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch sees no GPU here")
    archs = parse_names(parser, args.arch, configs)
    torch.set_num_threads(THREADS)
    if start_child(args):  # one allocator's timings, for measure() in the parent process
        (name,) = archs
        batch = args.batch or BATCHES[kind][name]
        only = [v for v in args.variants.split(",") if v]
        finish_child(args, {"step": timings(configs[name], args.device, batch, args.bf16, args.compile, only,
                                            rounds=1)})
        return
    results: dict[str, Any] = {"threads": THREADS, "device": args.device, "optimiser": f"AdamW (fused) lr={LR} wd=0.1",
                               "peer": "transformers CLIPModel(return_loss=True), its default attention",
                               "architectures": {}}
    for name in archs:
        batch = args.batch or BATCHES[kind][name]
        runs = {"fp32": measure(name, configs[name], args.device, batch, bf16=False, compile=args.compile)}
        if kind == "cuda" or args.bf16:
            runs["bf16"] = measure(name, configs[name], args.device, batch, bf16=True, compile=args.compile)
        results["architectures"][name] = runs
    path = write_result("train_step" if kind == "cpu" else "train_step-cuda", results)
    print(path.read_text())


if __name__ == "__main__":
    main()
