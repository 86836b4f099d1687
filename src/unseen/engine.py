"""The one training engine: devices, AMP, gradient accumulation, torchrun DDP, checkpoints, resume, logging.

Setting-agnostic. A task hands it
- a model (``nn.Module``; it may expose ``train_substeps()`` -> list of sub-step keys, one optimizer step each,
  default ``[None]``),
- a ``loss_fn(model, batch, substep) -> (loss, logs)`` that calls ``model(...)`` (so DDP hooks see the forward),
- a training ``Dataset`` (+ labels for the class-balanced episodic sampler when ``train.shots > 0``),
- an ``evaluate(model, epoch) -> dict`` returning at least the selection key (run on rank 0).

Per run folder it writes ``metrics.jsonl`` (one line per epoch), ``last.safetensors`` + ``last.state.pt``
(weights + optimizer/RNG state, ``weights_only``-loadable) after every epoch, and ``best.safetensors`` when the
validation score improves. ``resume=True`` continues from ``last.*``: data order and RNG are derived from
(seed, epoch, rank), so a resumed run reproduces the uninterrupted one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from unseen.config import TrainConfig
from unseen.io import append_jsonl, atomic_path, load_safetensors, load_torch, save_safetensors

log = logging.getLogger("unseen")


# --------------------------------------------------------------------------------------------- environment
def progress_enabled(flag: bool = True) -> bool:
    """tqdm bars only on a terminal, never under CI=true, never on ranks > 0."""
    if not flag or os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        return False
    return sys.stderr.isatty() and get_rank() == 0


def progress(iterable: Any, enabled: bool = True, **kwargs: Any) -> Any:
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=not progress_enabled(enabled), dynamic_ncols=True, leave=False, **kwargs)


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={name!r} but CUDA is not available on this machine")
    return dev


def init_distributed(device: torch.device) -> bool:
    """Join the torchrun process group if launched by torchrun (WORLD_SIZE > 1): gloo on CPU, nccl on CUDA."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return dist.is_available() and dist.is_initialized()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    return True


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, NumPy and torch (offset by the rank); optionally deterministic algorithms."""
    s = seed + 1000 * get_rank()
    random.seed(s)
    np.random.seed(s % (2**32))
    torch.manual_seed(s)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# --------------------------------------------------------------------------------------------- sampling
class EpisodicBatchSampler(Sampler[list[int]]):
    """Class-balanced episodes: each batch = ``ways`` classes (without replacement) x ``shots`` images each.

    Draws are seeded by (seed, epoch, rank), so every rank sees different episodes and a resumed epoch
    replays the same ones. Classes with fewer than ``shots`` images are sampled with replacement.
    """

    def __init__(self, labels: np.ndarray, ways: int, shots: int, n_batches: int, seed: int = 0) -> None:
        labels = np.asarray(labels)
        self.by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
        if ways > len(self.by_class):
            raise ValueError(
                f"episodic sampler: {ways} ways requested but the data has {len(self.by_class)} classes"
            )
        self.ways, self.shots, self.n_batches, self.seed, self.epoch = ways, shots, n_batches, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n_batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch, get_rank()])
        for _ in range(self.n_batches):
            batch: list[int] = []
            for c in rng.choice(len(self.by_class), self.ways, replace=False):
                pool = self.by_class[c]
                batch.extend(rng.choice(pool, self.shots, replace=len(pool) < self.shots).tolist())
            yield batch


class ShardedShuffleSampler(Sampler[int]):
    """Seeded shuffle per epoch, sharded across DDP ranks (padded so every rank has the same length)."""

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True, n_samples: int = 0) -> None:
        self.n, self.seed, self.shuffle, self.epoch, self.n_samples = n, seed, shuffle, 0, n_samples

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        total = self.n_samples or self.n
        reps = math.ceil(total / self.n)
        idx = np.concatenate(
            [rng.permutation(self.n) if self.shuffle else np.arange(self.n) for _ in range(reps)]
        )
        idx = idx[:total]
        world = get_world_size()
        per = math.ceil(len(idx) / world)
        idx = np.resize(idx, per * world)
        return idx[get_rank() :: world]

    def __len__(self) -> int:
        return len(self._indices())

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices().tolist())


def _seed_worker(worker_id: int) -> None:
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def make_train_loader(
    dataset: Dataset, cfg: TrainConfig, seed: int, labels: np.ndarray | None = None
) -> DataLoader:
    """Episodic (``shots > 0``) or shuffled loader; ``batches_per_epoch > 0`` fixes the epoch length."""
    common: dict[str, Any] = dict(num_workers=cfg.num_workers, worker_init_fn=_seed_worker)
    if cfg.shots > 0:
        if labels is None:
            raise ValueError("train.shots > 0 needs the training labels for the episodic sampler")
        ways = max(1, cfg.batch_size // cfg.shots)
        n_batches = cfg.batches_per_epoch or max(1, len(labels) // (ways * cfg.shots))
        sampler = EpisodicBatchSampler(labels, ways, cfg.shots, n_batches, seed)
        return DataLoader(dataset, batch_sampler=sampler, **common)
    n_samples = cfg.batches_per_epoch * cfg.batch_size * get_world_size() if cfg.batches_per_epoch else 0
    sampler2 = ShardedShuffleSampler(len(dataset), seed, True, n_samples)  # type: ignore[arg-type]
    return DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler2, drop_last=False, **common)


# --------------------------------------------------------------------------------------------- engine
LossFn = Callable[[nn.Module, Any, Any], tuple[torch.Tensor, dict[str, float]]]
EvalFn = Callable[[nn.Module, int], dict[str, Any]]


@dataclass
class FitResult:
    best_epoch: int = -1
    best_score: float = -math.inf
    last_epoch: int = -1
    history: list[dict[str, Any]] = field(default_factory=list)


def lr_at(cfg: TrainConfig, epoch: int, epochs: int | None = None) -> float:
    """Learning rate of ``epoch`` (0-based; set at epoch start). ``step``: StepLR stepped at epoch end
    (``lr_shift_compat`` reproduces the release: decay one epoch early). ``cosine``: cosine from ``lr`` to ``min_lr``
    over the epochs after the warm-up. ``warmup_epochs``: linear ramp lr*(e+1)/warmup first."""
    if epoch < cfg.warmup_epochs:
        return cfg.lr * (epoch + 1) / cfg.warmup_epochs
    if cfg.lr_schedule == "cosine":
        total = max(1, (epochs or cfg.epochs) - cfg.warmup_epochs)
        t = min(epoch - cfg.warmup_epochs, total) / total
        return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * t))
    if cfg.lr_schedule != "step":
        raise ValueError(f"train.lr_schedule: unknown schedule '{cfg.lr_schedule}' (step, cosine)")
    if cfg.lr_step <= 0:
        return cfg.lr
    e = epoch + 1 if cfg.lr_shift_compat else epoch
    return cfg.lr * cfg.lr_gamma ** (e // cfg.lr_step)


def make_optimizer(cfg: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"train.optimizer: unknown optimizer '{cfg.optimizer}' (sgd, adam, adamw)")


def move_to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(v, device) for v in batch)
    return batch


class Engine:
    """Trains one model in one run folder. Create one per training run."""

    def __init__(self, cfg: TrainConfig, run_dir: str | Path, seed: int = 0) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.seed = seed
        self.device = resolve_device(cfg.device)
        self.distributed = init_distributed(self.device)
        self.rank = get_rank()
        seed_everything(seed, cfg.deterministic)
        self.use_amp = cfg.amp and self.device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if self.use_amp and torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)

    # ---- checkpoints
    def _rng_state(self) -> dict[str, Any]:
        np_state: Any = np.random.get_state()
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2])},
            "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def _set_rng_state(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        keys = state["numpy"]["keys"].numpy().astype(np.uint32)
        np.random.set_state(("MT19937", keys, state["numpy"]["pos"], 0, 0.0))
        py = state["python"]
        random.setstate((py[0], tuple(py[1]), py[2]))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])

    def save_checkpoint(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        epoch: int,
        result: FitResult,
        meta: dict[str, str] | None = None,
    ) -> None:
        if self.rank != 0:
            return
        save_safetensors(self.run_dir / "last.safetensors", unwrap(model).state_dict(), metadata=meta)
        state = {
            "epoch": epoch,
            "optimizer": optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": self._rng_state(),
            "best_epoch": result.best_epoch,
            "best_score": result.best_score,
        }
        with atomic_path(self.run_dir / "last.state.pt") as tmp:
            torch.save(state, tmp)

    def load_checkpoint(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[int, FitResult]:
        weights = self.run_dir / "last.safetensors"
        state_file = self.run_dir / "last.state.pt"
        if not weights.is_file() or not state_file.is_file():
            raise FileNotFoundError(
                f"{self.run_dir}: nothing to resume (last.safetensors / last.state.pt missing)"
            )
        unwrap(model).load_state_dict(load_safetensors(weights))
        state = load_torch(state_file)
        optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self._set_rng_state(state["rng"])
        result = FitResult(
            best_epoch=state["best_epoch"], best_score=state["best_score"], last_epoch=state["epoch"]
        )
        metrics = self.run_dir / "metrics.jsonl"
        if metrics.is_file():
            import json

            # a run killed between its metrics line and its checkpoint logged an epoch it will redo: keep the
            # records up to the checkpoint, one per epoch
            by_epoch = {}
            for line in metrics.read_text().splitlines():
                if line.strip():
                    rec = json.loads(line)
                    if rec.get("epoch", -1) <= state["epoch"]:
                        by_epoch[rec["epoch"]] = rec
            result.history = [by_epoch[e] for e in sorted(by_epoch)]
        return state["epoch"] + 1, result

    # ---- training
    def fit(
        self,
        model: nn.Module,
        train_set: Dataset,
        loss_fn: LossFn,
        evaluate: EvalFn | None = None,
        *,
        select: str = "score",
        labels: np.ndarray | None = None,
        epochs: int | None = None,
        resume: bool = False,
        meta: dict[str, str] | None = None,
    ) -> FitResult:
        """Train for ``epochs`` (default ``cfg.epochs``); evaluate every ``eval_every`` epochs on rank 0."""
        cfg = self.cfg
        epochs = cfg.epochs if epochs is None else epochs
        self.run_dir.mkdir(parents=True, exist_ok=True)
        model.to(self.device)
        substeps = list(getattr(model, "train_substeps", lambda: [None])())
        if len(substeps) > 1 and cfg.grad_accum > 1:
            raise ValueError(
                "train.grad_accum > 1 is not supported with several optimizer sub-steps per batch"
            )
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = make_optimizer(cfg, params)
        start, result = 0, FitResult()
        if resume:
            start, result = self.load_checkpoint(model, optimizer)
            log.info("resuming %s at epoch %d", self.run_dir, start)
        train_model: nn.Module = model
        if self.distributed:
            train_model = nn.parallel.DistributedDataParallel(
                model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=len(substeps) > 1,
            )
        loader = make_train_loader(train_set, cfg, self.seed, labels)
        metrics_path = self.run_dir / "metrics.jsonl"
        for epoch in range(start, epochs):
            for g in optimizer.param_groups:
                g["lr"] = lr_at(cfg, epoch, epochs)
            sampler = loader.batch_sampler if cfg.shots > 0 else loader.sampler
            sampler.set_epoch(epoch)  # type: ignore[union-attr]
            torch.manual_seed(self.seed * 7919 + epoch * 104729 + self.rank)  # dropout/augmentation per epoch
            t0 = time.perf_counter()
            train_logs = self._train_epoch(train_model, loader, loss_fn, optimizer, substeps, epoch, epochs)
            record: dict[str, Any] = {
                "epoch": epoch,
                "lr": lr_at(cfg, epoch, epochs),
                "train_time_s": time.perf_counter() - t0,
            }
            record.update(train_logs)
            improved = False
            if evaluate is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == epochs):
                scores = evaluate(model, epoch) if self.rank == 0 else {}
                if self.distributed:
                    box = [scores]
                    dist.broadcast_object_list(box, src=0)
                    scores = box[0]
                record.update({f"val/{k}": v for k, v in scores.items() if not isinstance(v, (dict, list))})
                score = float(scores[select])
                if score > result.best_score:
                    result.best_score, result.best_epoch, improved = score, epoch, True
            result.last_epoch = epoch
            result.history.append(record)
            if self.rank == 0:
                append_jsonl(metrics_path, record)
                if improved:
                    save_safetensors(
                        self.run_dir / "best.safetensors", unwrap(model).state_dict(), metadata=meta
                    )
                self.save_checkpoint(model, optimizer, epoch, result, meta)
            log.info(
                "epoch %d/%d %s",
                epoch + 1,
                epochs,
                " ".join(f"{k}={v:.4g}" for k, v in record.items() if isinstance(v, float)),
            )
        if self.distributed:
            dist.barrier()
        return result

    def _train_epoch(
        self,
        model: nn.Module,
        loader: DataLoader,
        loss_fn: LossFn,
        optimizer: torch.optim.Optimizer,
        substeps: list[Any],
        epoch: int,
        epochs: int,
    ) -> dict[str, float]:
        cfg = self.cfg
        model.train()
        totals: dict[str, float] = {}
        n = 0
        bar = progress(loader, cfg.progress, desc=f"epoch {epoch + 1}/{epochs}")
        accum = max(1, cfg.grad_accum)
        optimizer.zero_grad(set_to_none=True)
        for i, batch in enumerate(bar):
            batch = move_to(batch, self.device)
            for sub in substeps:
                last_micro = (i + 1) % accum == 0 or i + 1 == len(loader)
                sync = contextlib.nullcontext()
                if self.distributed and not last_micro and len(substeps) == 1:
                    sync = model.no_sync()  # type: ignore[operator]
                with sync:
                    with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
                        loss, logs = loss_fn(model, batch, sub)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(
                            f"non-finite loss at epoch {epoch}, batch {i}: {float(loss)}"
                        )
                    self.scaler.scale(loss / accum).backward()
                if len(substeps) > 1 or last_micro:
                    if cfg.grad_clip > 0:
                        self.scaler.unscale_(optimizer)
                        nn.utils.clip_grad_norm_(
                            [p for g in optimizer.param_groups for p in g["params"]], cfg.grad_clip
                        )
                    self.scaler.step(optimizer)
                    self.scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                key = "loss" if sub is None else f"loss_{sub}"
                totals[key] = totals.get(key, 0.0) + float(loss.detach())
                for k, v in logs.items():
                    totals[k] = totals.get(k, 0.0) + float(v)
            n += 1
            if hasattr(bar, "set_postfix") and n % 10 == 0:
                bar.set_postfix(loss=f"{sum(v for k, v in totals.items() if k.startswith('loss')) / n:.3f}")
        return {f"train/{k}": v / max(n, 1) for k, v in totals.items()}
