"""What `polymodal eval ...` runs: load the model and the data, evaluate, add where the
numbers came from, and write the report.

    evaluation, report = run_eval("retrieval", "runs/flickr8k/model", "flickr8k-test.toml")
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from polymodal.checkpoint import read_card
from polymodal.data.records import PairSet
from polymodal.data.resolve import resolve_source
from polymodal.data.sources import load_source
from polymodal.errors import CheckpointError, DataError
from polymodal.eval.embed import Progress
from polymodal.eval.report import Evaluation, write_report
from polymodal.models.dual_encoder import DualEncoder
from polymodal.models.linear import adopt
from polymodal.tokenizer import Tokenizer
from polymodal.transforms import ImageTransform

TASKS = ("retrieval", "zeroshot", "linear-probe", "weat")


@dataclass(frozen=True)
class EvalOptions:
    batch_size: int = 128
    num_workers: int = 0  # image-decoding processes
    precision: str = "auto"  # auto | fp32 | bf16 | int8 (see polymodal.inference.PRECISIONS)
    device: str = ""  # "" = CUDA when available
    plots: bool = True

    def __post_init__(self) -> None:
        from polymodal.inference import check_precision

        check_precision(self.precision)


def resolve_model_dir(spec: str) -> Path:
    """A model directory, or "quickstart" for the model `polymodal quickstart` trained."""
    if spec == "quickstart":
        from polymodal.quickstart import quickstart_config

        path = Path(quickstart_config().output) / "model"
        if not (path / "config.json").is_file():
            raise CheckpointError("no quickstart model yet: run `polymodal quickstart` first")
        return path
    path = Path(spec)
    if not path.is_dir():
        raise CheckpointError(f"{spec}: no such model directory")
    return path


def check_device(name: str) -> torch.device:
    """A torch device the user named; unknown names and absent GPUs are errors."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DataError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DataError(f"device {name!r}: CUDA is not available on this machine")
    return device


@dataclass
class LoadedModel:
    model: DualEncoder
    tokenizer: Tokenizer
    transform: ImageTransform
    path: Path
    model_id: str


def load_for_eval(spec: str, options: EvalOptions) -> LoadedModel:
    from polymodal.checkpoint import model_id
    from polymodal.convert import is_hf_clip_dir
    from polymodal.factory import get_tokenizer, get_transforms, load_model

    path = resolve_model_dir(spec)
    # int8 kernels are CPU kernels: without a device named, an int8 model stays on the CPU
    device = check_device(options.device) if options.device else "cpu" if options.precision == "int8" else None
    model = load_model(path, device=device)
    # a polymodal directory's card holds the id of its weights file; a converted one has none yet
    mid = model_id(model.state_dict()) if is_hf_clip_dir(path) else read_card(path).model_id
    if options.precision == "int8":  # after the id: the vectors are still this model's, approximated
        from polymodal.inference import quantise_int8

        model = quantise_int8(model)
    else:  # a pretrained tower's own nn.Linear layers too: oneDNN's packed products for inference
        adopt(model)
    return LoadedModel(model, get_tokenizer(path), get_transforms(model.config), path, mid)


def default_out(task: str, model: Path, data: str) -> Path:
    """evals/<task>-<model folder>-<data>, e.g. evals/retrieval-flickr8k-flickr8k-test."""
    name = model.parent.name if model.name == "model" else model.name
    return Path("evals") / "-".join(_slug(p) for p in (task, name, Path(data).stem or data) if _slug(p))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "-", text).strip("-.")


def load_data(spec: str) -> PairSet:
    return load_source(resolve_source(spec))


def run_eval(task: str, model_spec: str, data_spec: str = "", out: str | Path | None = None,
             options: EvalOptions = EvalOptions(), progress: Progress | None = None,
             **settings: Any) -> tuple[Evaluation, Path]:
    """Evaluate and write result.json + report.md (+ plots) into `out`; returns both.

    settings: zeroshot: templates, synonyms; linear-probe: test (a DATA spec), shots,
    repeats; weat: tests (names, "all" or a JSON file), sentences, max_partitions, seed.
    """
    from polymodal.inference import model_device, resolve_precision

    if task not in TASKS:
        raise DataError(f"unknown evaluation {task!r}; one of {list(TASKS)}")
    loaded = load_for_eval(model_spec, options)
    dtype = resolve_precision(options.precision, model_device(loaded.model))
    common = {"batch_size": options.batch_size, "num_workers": options.num_workers, "dtype": dtype,
              "progress": progress}
    evaluation = _evaluate(task, loaded, data_spec, common, settings)
    evaluation.info = {"model": str(loaded.path), "model_id": loaded.model_id, "data_spec": data_spec,
                       "precision": options.precision, **evaluation.info}
    target = Path(out) if out else default_out(task, loaded.path, data_spec or settings.get("tests", "all"))
    return evaluation, write_report(evaluation, target, plots=options.plots)


def _evaluate(task: str, loaded: LoadedModel, data_spec: str, common: dict[str, Any],
              settings: dict[str, Any]) -> Evaluation:
    if task == "retrieval":
        from polymodal.eval.retrieval import evaluate_retrieval

        return evaluate_retrieval(loaded.model, loaded.tokenizer, loaded.transform, load_data(data_spec), **common)
    if task == "zeroshot":
        from polymodal.eval.zeroshot import DEFAULT_TEMPLATES, evaluate_zeroshot, resolve_templates

        templates = resolve_templates(settings.get("templates") or DEFAULT_TEMPLATES)
        return evaluate_zeroshot(loaded.model, loaded.tokenizer, loaded.transform, load_data(data_spec),
                                 templates=templates, synonyms=settings.get("synonyms", False), **common)
    if task == "linear-probe":
        from polymodal.eval.linear_probe import evaluate_linear_probe, split_by_hash

        train = load_data(data_spec)
        test_spec = settings.get("test") or ""
        train, test = (train, load_data(test_spec)) if test_spec else split_by_hash(train)
        return evaluate_linear_probe(loaded.model, loaded.transform, train, test, shots=settings.get("shots", ()),
                                     repeats=settings.get("repeats", 3), **common)
    from polymodal.eval.association import evaluate_association, load_tests

    return evaluate_association(loaded.model, loaded.tokenizer, loaded.transform,
                                load_tests(settings.get("tests") or "all"), sentences=settings.get("sentences", False),
                                max_partitions=settings.get("max_partitions", 100_000), seed=settings.get("seed", 0),
                                dtype=common["dtype"], progress=common["progress"])
