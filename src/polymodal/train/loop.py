"""The training loop: `Trainer(config).run()`.

The run folder holds everything a run needs to resume and everything it produced:

    RUN/train_config.json   the resolved configuration (a resumed run must match it)
    RUN/tokenizer.json      the tokenizer trained on the captions (from-scratch text towers)
    RUN/fusion_tokenizer.json   a fusion run's word-level tokenizer (its dual encoder may have its own)
    RUN/checkpoint.pt       model, optimiser, schedule, RNG, step, best metric
    RUN/metrics.jsonl       one line per logged step and per evaluation
    RUN/model/              the model directory: the best on validation, else the last
    RUN/dual_encoder/       a fusion run's dual encoder, trained with it (saved with RUN/model)
    RUN/summary.json        final numbers, wall time, unreadable images

Running the same command again resumes from checkpoint.pt and ends with exactly the
weights an uninterrupted run would have (tests/integration/test_train_resume.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from torch.utils.data import DataLoader

from polymodal.config import to_dict
from polymodal.data.loader import Batch, PairDataset, ResumableBatchSampler, collate
from polymodal.data.records import PairSet
from polymodal.data.sources import load_source
from polymodal.errors import ConfigError, PolymodalError
from polymodal.eval.retrieval import GREATER_IS_BETTER, oriented
from polymodal.factory import get_transforms
from polymodal.inference import resolve_precision
from polymodal.train import distributed as dist_utils
from polymodal.train.config import RESUMABLE_CHANGES, TrainConfig, load_train_config
from polymodal.train.objectives import Objective, build_objective
from polymodal.train.optim import build_optimizer, build_scheduler, load_optimizer_state
from polymodal.train.state import load_state, rng_state, save_state, set_rng_state


@dataclass
class TrainResult:
    run_dir: Path
    model_dir: Path
    model_id: str
    steps: int
    total_steps: int
    seconds: float
    metrics: dict[str, float]  # validation metrics of the saved model (empty without val)
    skipped: dict[str, str] = field(default_factory=dict)  # unreadable image -> reason
    stopped_early: bool = False
    resumed_from: int = 0


@dataclass
class _Progress:
    """Counters that a checkpoint carries across a kill."""

    step: int = 0
    best: float = -math.inf
    best_step: int = 0
    bad_evals: int = 0
    seconds: float = 0.0
    skipped: dict[str, str] = field(default_factory=dict)
    stopped: bool = False  # early stopping ended the run: a re-run must not train on


@dataclass
class _Run:
    """Everything built for one run (or resumption)."""

    info: dist_utils.DistInfo
    objective: Objective
    train_pairs: PairSet
    val_pairs: PairSet | None
    dtype: torch.dtype | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    total: int
    steps_per_epoch: int
    progress: _Progress
    resumed_from: int

    @property
    def model(self) -> torch.nn.Module:
        return self.objective.model


class Trainer:
    def __init__(self, config: TrainConfig, console: Console | None = None, show_progress: bool = True) -> None:
        self.config = config
        self.console = console or Console(stderr=True)
        self.show_progress = show_progress
        self.run_dir = Path(config.output)
        self.state_file = self.run_dir / "checkpoint.pt"

    def run(self) -> TrainResult:
        info = dist_utils.setup(self.config.train.device)
        try:
            run = self._prepare(info)
            if run.progress.step < run.total and not run.progress.stopped:
                run.progress.stopped = self._loop(run)
            return self._finish(run)
        finally:
            dist_utils.teardown()

    # ------------------------------------------------------------------ setup

    def _prepare(self, info: dist_utils.DistInfo) -> _Run:
        cfg = self.config
        state = load_state(self.state_file) if self.state_file.is_file() else None
        if state is not None:
            self._check_same_config(state.get("config", {}))
        if info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if state is None:  # a fresh start: nothing of an earlier, unfinished attempt survives
                self._remove_outputs()
            (self.run_dir / "train_config.json").write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
        dist_utils.barrier(info)
        torch.manual_seed(cfg.seed)
        train_pairs = load_source(cfg.data)
        val_pairs = load_source(cfg.val) if cfg.val is not None else None
        dtype = resolve_precision(cfg.train.precision, info.device)
        objective = build_objective(cfg, train_pairs, val_pairs, info, self.run_dir, state is not None, dtype,
                                    lambda message: self._status(info, message))
        model = objective.model
        optimizer = build_optimizer(model, cfg.optim)
        steps_per_epoch = len(train_pairs) // cfg.train.batch_size
        total = cfg.train.steps or math.ceil(cfg.train.epochs * max(1, steps_per_epoch))
        scheduler = build_scheduler(optimizer, cfg.optim, total)
        progress = _Progress()
        if state is not None:
            model.load_state_dict(state["model"])
            load_optimizer_state(optimizer, state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            set_rng_state(state["rng"])
            progress = _Progress(**state["progress"])
            if info.is_main:
                self._truncate_metrics(progress.step)
        dist_utils.broadcast_parameters(model, info)
        return _Run(info, objective, train_pairs, val_pairs, dtype, optimizer, scheduler, total, steps_per_epoch,
                    progress, progress.step)

    def _remove_outputs(self) -> None:
        for name in ("metrics.jsonl", "summary.json", "tokenizer.json", "fusion_tokenizer.json"):
            (self.run_dir / name).unlink(missing_ok=True)
        for folder in ("model", "dual_encoder"):
            shutil.rmtree(self.run_dir / folder, ignore_errors=True)

    def _check_same_config(self, saved: dict[str, Any]) -> None:
        changed = [k for k in _diff(_with_defaults(saved), to_dict(self.config)) if k not in RESUMABLE_CHANGES]
        if changed:
            raise ConfigError(f"{self.run_dir} holds a run with a different configuration "
                              f"({', '.join(changed)}); use another output folder, or delete its "
                              "checkpoint.pt to start over")

    # ------------------------------------------------------------------ the loop

    def _loop(self, run: _Run) -> bool:
        """Train from run.progress.step to run.total; returns whether it stopped early."""
        cfg, info, progress, model = self.config, run.info, run.progress, run.model
        params = [p for p in model.parameters() if p.requires_grad]
        sampler = ResumableBatchSampler(len(run.train_pairs), cfg.train.batch_size, run.total, cfg.seed,
                                        progress.step, info.rank, info.world_size)
        workers = cfg.train.num_workers
        loader = DataLoader(PairDataset(run.train_pairs.records, get_transforms(run.objective.preprocess, cfg.augment),
                                        cfg.seed),
                            batch_sampler=sampler, collate_fn=collate, num_workers=workers,
                            persistent_workers=workers > 0, worker_init_fn=_worker_init,
                            prefetch_factor=4 if workers > 0 else None,
                            # its own generator: a loader draws a seed when it starts, and drawing it
                            # from the global RNG would shift the draws of the objectives that use it
                            # (the fusion masks and negatives) between a run and its resumption
                            generator=torch.Generator().manual_seed(cfg.seed))
        eval_every = cfg.train.eval_every or max(1, run.steps_per_epoch)
        stop = False
        step = progress.step
        window_start, window_samples, last_tick = time.perf_counter(), 0, time.perf_counter()
        bar, bar_task = self._progress_bar(info, run.total, step)
        with bar, _InterruptFlag() as interrupt:
            for batch in _unwrapped(loader):
                model.train()
                run.optimizer.zero_grad(set_to_none=True)
                run.objective.before_step(step, run.total)
                loss = run.objective.backward(batch, cfg.train.accum_steps, run.dtype)
                dist_utils.average_gradients(params, info)
                grad_norm = _clip(params, cfg.optim.grad_clip)
                lr = run.scheduler.get_last_lr()[0]  # the rate this step used
                run.optimizer.step()
                run.scheduler.step()
                run.objective.after_step()
                step += 1
                now = time.perf_counter()
                progress.seconds += now - last_tick
                last_tick = now
                self._note_skipped(batch, progress, info)
                window_samples += len(batch) * info.world_size
                rate = window_samples / max(1e-9, now - window_start)
                bar.update(bar_task, advance=1, loss=f"{loss:.3f}", rate=f"{rate:.0f}")
                if step % cfg.train.log_every == 0 or step == run.total:
                    self._log(info, {"step": step, "epoch": round(step / max(1, run.steps_per_epoch), 3),
                                     "loss": loss, "lr": lr, **run.objective.log_fields(),
                                     "grad_norm": grad_norm, "samples_per_s": rate, "seconds": progress.seconds})
                    window_start, window_samples = now, 0
                if run.val_pairs is not None and (step % eval_every == 0 or step == run.total):
                    stop = dist_utils.broadcast_flag(self._evaluate(run, step), info)
                    last_tick = time.perf_counter()  # evaluation time is not training time
                budget = cfg.train.max_minutes
                out_of_time = dist_utils.any_flag(budget > 0 and progress.seconds > 60 * budget, info)
                interrupted = dist_utils.any_flag(interrupt.raised, info)
                if step % cfg.train.checkpoint_every == 0 or step == run.total or stop or out_of_time or interrupted:
                    run.progress.stopped = stop
                    self._save_state(run, step)
                if interrupted:
                    raise KeyboardInterrupt  # after the step's state is saved
                if out_of_time and info.is_main:
                    self.console.print(f"time budget of {budget} min reached at step {step}/{run.total}")
                if stop or out_of_time:
                    break
        return stop

    def _save_state(self, run: _Run, step: int) -> None:
        run.progress.step = step
        run.progress.skipped = dist_utils.merge_dicts(run.progress.skipped, run.info)
        if run.info.is_main:
            save_state(self.state_file, {
                "step": step, "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
                "scheduler": run.scheduler.state_dict(), "rng": rng_state(),
                "progress": dataclasses.asdict(run.progress), "config": to_dict(self.config)})
        dist_utils.barrier(run.info)

    # ------------------------------------------------------------------ evaluation and output

    def _evaluate(self, run: _Run, step: int) -> bool:
        """Validate on rank 0, keep the best model, and say whether to stop early."""
        if not run.info.is_main:
            return False
        cfg, progress = self.config.train, run.progress
        metrics = self._validation_metrics(run)
        self._log(run.info, {"step": step, "eval": metrics})
        name = cfg.early_stopping_metric or run.objective.primary_metric
        score = oriented(name, metrics[name]) if name in GREATER_IS_BETTER else metrics[name]
        if score > progress.best:
            progress.best, progress.best_step, progress.bad_evals = score, step, 0
            self._save_model(run, step, metrics)
        else:
            progress.bad_evals += 1
        return cfg.early_stopping_patience > 0 and progress.bad_evals >= cfg.early_stopping_patience

    def _validation_metrics(self, run: _Run) -> dict[str, float]:
        assert run.val_pairs is not None
        return run.objective.validate(run.val_pairs, run.dtype)

    def _save_model(self, run: _Run, step: int, metrics: dict[str, float]) -> str:
        cfg = self.config
        training = {"data": run.train_pairs.name, "pairs": len(run.train_pairs), "steps": step,
                    "samples_seen": step * cfg.train.batch_size, "task": cfg.task, "config": to_dict(cfg)}
        return run.objective.save(self.run_dir / "model", training, metrics, f"polymodal train ({cfg.output})")

    def _finish(self, run: _Run) -> TrainResult:
        model_dir, progress = self.run_dir / "model", run.progress
        progress.skipped = dist_utils.merge_dicts(progress.skipped, run.info)
        if run.info.is_main:
            if run.val_pairs is None:
                self._save_model(run, progress.step, {})
            elif not (model_dir / "config.json").is_file():  # e.g. a budget cut before any evaluation
                self._save_model(run, progress.step, self._validation_metrics(run))
        dist_utils.barrier(run.info)
        card = json.loads((model_dir / "config.json").read_text())  # the saved model's own numbers
        if run.info.is_main:
            summary = {"steps": progress.step, "total_steps": run.total, "seconds": round(progress.seconds, 1),
                       "metrics": card["metrics"], "model_step": card["training"]["steps"],
                       "stopped_early": progress.stopped, "skipped_images": progress.skipped}
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        # the ranks tear the process group down together: a gloo rank whose peer has already
        # closed its connections can abort at exit ("terminate called without an active exception")
        dist_utils.barrier(run.info)
        return TrainResult(self.run_dir, model_dir, card["model_id"], progress.step, run.total, progress.seconds,
                           card["metrics"], progress.skipped, progress.stopped, run.resumed_from)

    def _note_skipped(self, batch: Batch, progress: _Progress, info: dist_utils.DistInfo) -> None:
        for name, reason in batch.skipped:
            if name not in progress.skipped and self.show_progress and info.is_main:
                self.console.print(f"[yellow]skipped unreadable image[/yellow] {reason}")
            progress.skipped[name] = reason

    def _log(self, info: dist_utils.DistInfo, record: dict[str, Any]) -> None:
        if info.is_main:
            with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def _truncate_metrics(self, step: int) -> None:
        """Drop log lines a killed run wrote after its last checkpoint: they are redone."""
        path = self.run_dir / "metrics.jsonl"
        if path.is_file():
            lines = [line for line in path.read_text().splitlines() if line.strip()]
            kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
            path.write_text("".join(line + "\n" for line in kept))

    def _progress_bar(self, info: dist_utils.DistInfo, total: int, done: int) -> tuple[Progress, TaskID]:
        bar = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[rate]} samples/s  loss {task.fields[loss]}"),
                       TimeRemainingColumn(), console=self.console,
                       disable=not (self.show_progress and info.is_main))
        return bar, bar.add_task("train", total=total, completed=done, loss="-", rate="-")

    def _status(self, info: dist_utils.DistInfo, message: str) -> Any:
        if self.show_progress and info.is_main:
            return self.console.status(message)
        return _Null()


class _InterruptFlag:
    """Ctrl-C during training finishes the current step, saves it, then stops (a second
    Ctrl-C stops at once). Stopping mid-step would save weights one update ahead of the
    step counter, and under torchrun would leave the other ranks waiting in a collective."""

    def __init__(self) -> None:
        self.raised = False
        self._previous: Any = None

    def __enter__(self) -> _InterruptFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.raised:
            raise KeyboardInterrupt
        self.raised = True

    def __exit__(self, *args: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _unwrapped(loader: DataLoader) -> Iterator[Batch]:
    """Batches of `loader`; an error raised in a worker process comes back with the
    worker's traceback folded into its message, which is unwrapped to its last line."""
    iterator = iter(loader)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except PolymodalError as err:
            message = str(err)
            if "Original Traceback" not in message:
                raise
            last = message.strip().splitlines()[-1]
            raise type(err)(last.split(": ", 1)[1] if ": " in last else last) from None
        yield batch


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: object) -> None:
        return None


def _clip(params: list[torch.nn.Parameter], max_norm: float) -> float:
    if max_norm > 0:
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    grads = [p.grad.norm() for p in params if p.grad is not None]
    return float(torch.stack(grads).norm()) if grads else 0.0


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # decoding workers must not compete with the model's threads


def _with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's configuration with the defaults of settings added since it was written,
    so that upgrading polymodal does not make an unfinished run look reconfigured."""
    try:
        return to_dict(load_train_config(None, base=saved))
    except ConfigError:  # a setting since removed or renamed: compare as saved, naming the difference
        return saved


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys where two nested dicts differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b))
        return [k for key in keys for k in _diff(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix.rstrip(".")]


def train(config: TrainConfig, console: Console | None = None, show_progress: bool = True) -> TrainResult:
    """Run (or resume) training as `config` describes."""
    return Trainer(config, console, show_progress).run()

