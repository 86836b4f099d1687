"""The one training engine: devices, AMP, gradient accumulation, torchrun DDP, checkpoints, resume, logging.

Setting-agnostic. A task hands it
- a model (``nn.Module``; it may expose ``train_substeps()`` -> list of sub-step keys, one optimizer step each,
  default ``[None]``, and ``ddp_find_unused_parameters = True`` when some of its parameters may get no gradient
  in a step, which torchrun's DDP must be told),
- a ``loss_fn(model, batch, substep) -> (loss, logs)`` that calls ``model(...)`` (so DDP hooks see the forward),
- a training ``Dataset`` (+ labels for the class-balanced episodic sampler when ``train.shots > 0``),
- an ``evaluate(model, epoch) -> dict`` returning at least the selection key (run on rank 0).

Per run folder it writes ``metrics.jsonl`` and ``metrics.csv`` (one line per epoch), the checkpoint
``last.safetensors`` + ``last.state.pt`` (weights + optimizer/RNG state, ``weights_only``-loadable, the state naming
the weights' SHA-256) after every epoch, and ``best.safetensors`` when the validation score improves. ``resume=True``
continues from the checkpoint: data order and RNG are derived from (seed, epoch, rank), so a resumed run reproduces
the uninterrupted one.
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

from unseen.config import ConfigError, TrainConfig
from unseen.io import (
    DataFormatError,
    append_jsonl,
    atomic_path,
    atomic_write_text,
    file_sha256,
    load_safetensors,
    load_torch,
    safetensors_metadata,
    save_safetensors,
)

log = logging.getLogger("unseen")


# --------------------------------------------------------------------------------------------- environment
def progress_enabled(flag: bool = True) -> bool:
    """tqdm bars only on a terminal, never under CI=true, never on ranks > 0."""
    if not flag or os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        return False
    return sys.stderr.isatty() and get_rank() == 0


PROGRESS_MIN_S = 5.0  # loops shorter than this log nothing off a terminal
PROGRESS_MAX_GAP_S = 30.0  # off a terminal, a line at least this often


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s // 60 % 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class LogProgress:
    """Progress for logs that are not a terminal (CI, ``nohup``, cluster jobs), where tqdm stays silent: a line
    ``desc: i/total (p%)  rate  postfix  eta`` every tenth of the loop and at least every 30 s, once the loop has
    run for 5 s."""

    def __init__(
        self, iterable: Any, desc: str = "", total: int | None = None, unit: str = "it", scale: int = 1
    ):
        self.iterable, self.desc, self.unit, self.scale = iterable, desc, unit, scale
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.every = max(1, (self.total or 100) // 10)
        self.postfix: dict[str, Any] = {}
        self.lines = 0

    def __len__(self) -> int:
        return len(self.iterable)

    def set_postfix(self, **values: Any) -> None:
        self.postfix.update(values)

    def __iter__(self) -> Iterator[Any]:
        t0 = last = time.perf_counter()
        for i, item in enumerate(self.iterable, 1):
            yield item  # resumes after the caller processed the item: the line includes its time
            now = time.perf_counter()
            if (i % self.every == 0 and now - t0 >= PROGRESS_MIN_S) or now - last >= PROGRESS_MAX_GAP_S:
                last = now
                self.lines += 1
                log.info(self.line(i, now - t0))

    def line(self, i: int, elapsed: float) -> str:
        head = f"{self.desc}: {i}" + (f"/{self.total} ({100 * i / self.total:.0f}%)" if self.total else "")
        parts = [head, f"{i * self.scale / max(elapsed, 1e-9):.1f} {self.unit}/s"]
        parts += [f"{k}={v}" for k, v in self.postfix.items()]
        if self.total:
            parts.append(f"eta {_hms(elapsed / i * (self.total - i))}")
        return "  ".join(parts)


def progress(
    iterable: Any, enabled: bool = True, desc: str = "", unit: str = "it", scale: int = 1, **kwargs: Any
) -> Any:
    """A tqdm bar on a terminal; elsewhere :class:`LogProgress` lines; nothing when ``enabled`` is false or on
    ranks > 0 (under torchrun rank 0 reports)."""
    if not enabled or get_rank() != 0:
        return iterable
    if progress_enabled(enabled):
        # not tqdm.auto: its asyncio wrapper calls iter() at construction, a throwaway DataLoader iterator that
        # draws from the global RNG, so dropout masks (and results) depended on whether stderr was a terminal
        from tqdm import tqdm

        return tqdm(iterable, desc=desc, dynamic_ncols=True, leave=False, **kwargs)
    return LogProgress(iterable, desc, kwargs.get("total"), unit, scale)


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
        raise ConfigError(
            f"train.device: {name!r} but CUDA is not available on this machine (use auto or cpu)"
        )
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


# --------------------------------------------------------------------------------------------- weights
def _few(items: list[str], limit: int = 4) -> str:
    more = f", ... (+{len(items) - limit})" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def load_state_checked(
    module: nn.Module, path: str | Path, owner: str, optional: tuple[str, ...] = ()
) -> None:
    """The one loader of weights a run wrote (checkpoints, best and final models): every tensor of ``module`` must
    be in the file with its shape and the file may hold nothing else; tensors under the ``optional`` prefixes may
    be absent (parts that are not saved, e.g. a frozen backbone). Anything else names the file and what does not
    fit, in a :class:`DataFormatError`; nothing is loaded then."""
    state = load_safetensors(path)
    own = module.state_dict()
    missing = [k for k in own if k not in state and not (optional and k.startswith(optional))]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} (model {tuple(v.shape)})"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of the model's {len(own)} tensors missing ({_few(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} tensors the model does not have ({_few(unexpected)})")
        if shapes:
            parts.append(f"{len(shapes)} with other shapes ({_few(shapes)})")
        written = safetensors_metadata(path).get("model")
        origin = f"; the file was written by a '{written}' model" if written and written != owner else ""
        raise DataFormatError(
            f"{path}: not weights of this run's model '{owner}': {'; '.join(parts)}{origin}"
        )
    module.load_state_dict(state, strict=False)  # checked above; strict would refuse the optional parts


# --------------------------------------------------------------------------------------------- checkpoints
CHECKPOINT = "last.safetensors"
CHECKPOINT_STATE = "last.state.pt"
_PENDING = "last.state.pt.pending"
_NEW_WEIGHTS = ".last.safetensors.new"


def settle_checkpoint(run_dir: str | Path) -> bool:
    """Complete or roll back a checkpoint write that a kill interrupted, remove stray temporary files, and say
    whether a checkpoint is there. Only the process that owns the run folder may call it."""
    run_dir = Path(run_dir)
    pending, weights = run_dir / _PENDING, run_dir / CHECKPOINT
    if pending.is_file():
        try:
            done = weights.is_file() and load_torch(pending)["weights_sha256"] == file_sha256(weights)
        except Exception:  # a pending state cut short by the kill
            done = False
        if done:  # killed between the two renames: the new weights are in place, finish the pair
            os.replace(pending, run_dir / CHECKPOINT_STATE)
            log.info("%s: completed the checkpoint a kill had interrupted", run_dir)
        else:  # killed before the new weights were in place: the previous pair stands
            pending.unlink()
    for stray in [*run_dir.glob(".*.tmp"), run_dir / _NEW_WEIGHTS]:
        stray.unlink(missing_ok=True)
    return weights.is_file() and (run_dir / CHECKPOINT_STATE).is_file()


def write_metrics_csv(path: Path, history: list[dict[str, Any]]) -> None:
    """``metrics.csv``: the epochs' records as a table (columns in first-seen order), rewritten every epoch."""
    import csv
    import io

    cols: dict[str, None] = {}
    for rec in history:
        cols.update(dict.fromkeys(k for k, v in rec.items() if not isinstance(v, (dict, list))))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(cols), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, buf.getvalue())


def _read_metrics(path: Path, upto: int) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl`` up to epoch ``upto``, one per epoch (a run killed between its metrics line
    and its checkpoint logged an epoch it will redo). A line cut short by a kill is dropped (and the file rewritten
    without it); any other unreadable line is an error naming the file and line."""
    import json

    lines = path.read_text(encoding="utf-8").splitlines()
    by_epoch: dict[int, dict[str, Any]] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):
                log.warning("%s: dropping its last line, cut short by a kill (%r)", path, line[:60])
                atomic_write_text(path, "".join(f"{x}\n" for x in lines[:-1]))
                break
            raise DataFormatError(f"{path}: line {n} is not valid JSON: {line[:80]!r}") from None
        if rec.get("epoch", -1) <= upto:
            by_epoch[rec["epoch"]] = rec
    return [by_epoch[e] for e in sorted(by_epoch)]


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
        """Write the checkpoint as one unit: the new weights to a temporary file, then the state naming their hash
        (as ``last.state.pt.pending``), then both renamed into place. A kill at any point leaves either the previous
        pair or a pending state that :func:`settle_checkpoint` completes."""
        if self.rank != 0:
            return
        new_weights = self.run_dir / _NEW_WEIGHTS
        save_safetensors(new_weights, unwrap(model).state_dict(), metadata=meta)
        state = {
            "epoch": epoch,
            "optimizer": optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": self._rng_state(),
            "best_epoch": result.best_epoch,
            "best_score": result.best_score,
            "weights_sha256": file_sha256(new_weights),
        }
        with atomic_path(self.run_dir / _PENDING) as tmp:
            torch.save(state, tmp)
        os.replace(new_weights, self.run_dir / CHECKPOINT)
        os.replace(self.run_dir / _PENDING, self.run_dir / CHECKPOINT_STATE)

    def load_checkpoint(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, owner: str = "model"
    ) -> tuple[int, FitResult]:
        if not settle_checkpoint(self.run_dir):
            raise FileNotFoundError(
                f"{self.run_dir}: nothing to resume ({CHECKPOINT} / {CHECKPOINT_STATE} missing)"
            )
        weights, state_file = self.run_dir / CHECKPOINT, self.run_dir / CHECKPOINT_STATE
        state = load_torch(state_file)
        if "weights_sha256" in state and state["weights_sha256"] != file_sha256(weights):
            raise DataFormatError(
                f"{weights}: not the weights {state_file} was saved with (epoch {state['epoch']}); the checkpoint "
                "cannot be resumed exactly: delete the folder's last.* files to restart this phase"
            )
        load_state_checked(unwrap(model), weights, owner)
        optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self._set_rng_state(state["rng"])
        result = FitResult(
            best_epoch=state["best_epoch"], best_score=state["best_score"], last_epoch=state["epoch"]
        )
        metrics = self.run_dir / "metrics.jsonl"
        if metrics.is_file():
            result.history = _read_metrics(metrics, state["epoch"])
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
        tracker: Any = None,
    ) -> FitResult:
        """Train for ``epochs`` (default ``cfg.epochs``); evaluate every ``eval_every`` epochs on rank 0.
        ``tracker`` (an :class:`unseen.tracking.Tracker`) receives every epoch's record."""
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
            start, result = self.load_checkpoint(model, optimizer, (meta or {}).get("model", "model"))
            log.info("resuming %s at epoch %d", self.run_dir, start)
        train_model: nn.Module = model
        if self.distributed:
            # sub-steps train parts of the model; a model may leave a part idle for its data and says so
            find_unused = len(substeps) > 1 or bool(getattr(model, "ddp_find_unused_parameters", False))
            train_model = nn.parallel.DistributedDataParallel(
                model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=find_unused,
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
                write_metrics_csv(self.run_dir / "metrics.csv", result.history)
                if tracker is not None:
                    tracker.log_scalars(record, step=epoch, prefix=self.run_dir.name)
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
        bar = progress(
            loader,
            cfg.progress,
            desc=f"{self.run_dir.name} epoch {epoch + 1}/{epochs}",
            unit="samples",
            scale=cfg.batch_size,
        )
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
            if hasattr(bar, "set_postfix") and (n % 10 == 0 or n == 1):
                bar.set_postfix(loss=f"{sum(v for k, v in totals.items() if k.startswith('loss')) / n:.3f}")
        return {f"train/{k}": v / max(n, 1) for k, v in totals.items()}
