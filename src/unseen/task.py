"""The one run protocol. Every setting follows it; a setting's :class:`Task` subclass supplies only what differs.

``Task.run()`` is fixed:

1. write the resolved ``config.yaml`` (rank 0);
2. ``fit()``: train on the :class:`~unseen.engine.Engine` (resume, best record), choosing the epoch on validation
   (``select_key``); closed-form methods (registry ``fit="closed_form"``) and methods that train nothing
   (``fit="none"``) take their own branch, declared by their registry entry, not by name;
3. ``save_assets()``: what ``unseen predict`` needs besides the weights;
4. ``test()``: the test set, evaluated once with what validation chose;
5. one ``results.json``: the common block (setting, method, dataset, metrics, selection rule, chance, seed, hashes,
   versions; anything chosen on the test set apart, under ``oracle_test_selected``) + the setting's extra keys;
6. plots, which may fail without losing the run.

A setting overrides the hooks below (``setup``, ``build_model``, ``train_set``, ``loss_fn``, ``evaluate``,
``test``, ``chance``, ...). The attribute setting's calibrate-then-retrain protocol overrides ``fit`` alone.
Finished runs are read back with the class methods ``load_model`` / ``predictor`` (no dataset needed) and
``evaluate_saved`` (recomputes the test metrics).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from unseen.config import (
    ConfigError,
    RunConfig,
    TrainConfig,
    config_hash,
    dump_yaml,
    load_run_config,
    to_dict,
)
from unseen.engine import (
    CHECKPOINT_STATE,
    Engine,
    EvalFn,
    FitResult,
    LossFn,
    load_state_checked,
    resolve_device,
    settle_checkpoint,
)
from unseen.io import atomic_write_json, atomic_write_text, save_safetensors, versions
from unseen.registry import Entry, get_dataset_entry, get_model_entry, get_task
from unseen.tracking import Tracker

log = logging.getLogger("unseen")

TEST_SCORES_LIMIT = 256 << 20  # test_scores.npy is written when the score matrix is at most this large


@dataclass
class Prepared:
    """What a dataset builder returns: the setting's data container, values it suggests for the model config (used
    only where the user left the key empty, and recorded in config.yaml) and the embedded world's config."""

    data: Any
    suggestions: dict[str, Any] = field(default_factory=dict)
    world: dict | None = None


@dataclass
class Fitted:
    """The model validation chose and how it was chosen (``selection`` goes to results.json as it is)."""

    model: Any
    selection: dict[str, Any]
    test_scores: np.ndarray | None = None  # closed-form fits score the test set themselves


@dataclass
class Tested:
    """The single test evaluation: headline metrics, the scores, test-selected numbers (kept apart), extra keys."""

    metrics: dict[str, Any]
    scores: np.ndarray | None = None
    oracle: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    detail: Any = None  # whatever the setting's plots need (e.g. the evaluator's curve)


@dataclass(frozen=True)
class DemoSpec:
    """The embedded-benchmark demo of a setting: packaged configs run in order, and the printed table."""

    methods: tuple[str, ...]
    title: str
    columns: tuple[tuple[str, str], ...]
    footer: str = ""


@dataclass
class Predictor:
    """A finished run turned into a scorer: candidate names, which are seen, and ``scorer(kept indices)`` ->
    ``f(image path) -> scores over the kept candidates``."""

    names: list[str]
    seen: list[int]
    scorer: Callable[[np.ndarray], Callable[[str], torch.Tensor]]


def select_classes(names: Sequence[str], seen: Sequence[int], classes: str) -> np.ndarray:
    """Indices for ``--classes``: all | seen | unseen | comma-separated names (unknown names are an error)."""
    seen_set = set(int(i) for i in seen)
    if classes == "all":
        return np.arange(len(names))
    if classes in ("seen", "unseen"):
        want = classes == "seen"
        return np.array([i for i in range(len(names)) if (i in seen_set) == want])
    wanted = [c.strip() for c in classes.split(",") if c.strip()]
    unknown = [c for c in wanted if c not in names]
    if unknown:
        raise ValueError(
            f"--classes: unknown class name(s) {unknown}; the run knows {len(names)} "
            f"(e.g. {', '.join(list(names)[:5])})"
        )
    return np.array([list(names).index(c) for c in wanted])


class RunFolderClaim:
    """Exclusive ownership of a run folder for one process (rank 0), held until :meth:`release`.

    The folder is created if needed and ``.lock`` in it is locked (``flock``: released by the OS when the process
    dies, so a killed run can be resumed at once). A second run into the same folder is refused before it writes
    anything; a new run (not ``resume``) is refused if the folder already holds files."""

    LOCK = ".lock"

    def __init__(self, run_dir: Path, resume: bool) -> None:
        import fcntl

        if run_dir.exists() and not run_dir.is_dir():
            raise FileExistsError(f"{run_dir}: exists and is not a folder (check output_dir / name)")
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise FileExistsError(
                f"{run_dir}: cannot create it: a parent is a file (check output_dir)"
            ) from None
        self.fd = os.open(run_dir / self.LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            raise FileExistsError(
                f"{run_dir}: another unseen process (pid {holder}) is writing to this run folder; wait for it or "
                "choose another name="
            ) from None
        others = [f.name for f in run_dir.iterdir() if f.name != self.LOCK]
        if others and not resume:
            self.release()
            raise FileExistsError(
                f"{run_dir} already exists: choose another name= or continue it with --resume {run_dir}"
            )
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = -1


def require_weights(model_cfg: Any, key: str, what: str) -> None:
    """On a real dataset, refuse a model whose pretrained weights are not set: the user would train (or evaluate)
    a random network for hours. Called by the real datasets' builders, before any work."""
    if getattr(model_cfg, key, None) or getattr(model_cfg, "pretrained", False):
        return
    if getattr(model_cfg, "allow_random_init", False):
        log.warning(
            "model.%s is not set: a randomly initialised %s (model.allow_random_init=true)", key, what
        )
        return
    raise ConfigError(
        f"model.{key} is not set: a randomly initialised {what} would be trained; set it, or "
        "model.allow_random_init=true"
    )


def val_record(history: list[dict[str, Any]], epoch: int) -> dict[str, Any]:
    """The validation numbers of ``epoch`` from the engine's history, as ``val_<key>``."""
    best = next((h for h in history if h["epoch"] == epoch), {})
    return {f"val_{k[4:]}": v for k, v in best.items() if k.startswith("val/")}


class Task:
    """One method on one dataset, in one run folder. Subclasses set ``setting`` and are registered with
    :func:`unseen.registry.register_task`."""

    setting: ClassVar[str] = ""
    select_key: ClassVar[str] = "score"  # the validation metric that chooses the epoch
    demo: ClassVar[DemoSpec | None] = None
    weights_file: ClassVar[str] = "model.safetensors"  # the selected model, at the run folder's root
    tracker: Tracker | None = None  # set by run() on rank 0

    def __init__(self, cfg: RunConfig, run_dir: str | Path, resume: bool = False) -> None:
        self.cfg, self.run_dir, self.resume = cfg, Path(run_dir), resume
        self.rank = int(os.environ.get("RANK", "0"))  # torchrun: rank 0 writes the run's files
        self.model_entry: Entry = get_model_entry(cfg.model.name, self.setting)
        prep: Prepared = get_dataset_entry(cfg.data.name, self.setting).builder(cfg.data, cfg.model)
        self.world = prep.world
        self._apply_suggestions(prep.suggestions)
        self.device = resolve_device(cfg.train.device)
        self.setup(prep.data)

    def _apply_suggestions(self, suggestions: dict[str, Any]) -> None:
        for key, value in suggestions.items():
            if value and not getattr(self.cfg.model, key, None):
                setattr(self.cfg.model, key, value)  # recorded in config.yaml
                log.info("model.%s = %s (from the dataset)", key, value)

    # ------------------------------------------------------------------------------------- setting hooks
    def setup(self, data: Any) -> None:
        """Keep the data container and derive what the run needs from it."""
        self.data = data

    def build_model(self) -> Any:
        raise NotImplementedError

    def train_set(self) -> Dataset:
        raise NotImplementedError

    def loss_fn(self) -> LossFn:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, epoch: int) -> dict[str, Any]:
        """Validation metrics after an epoch (must contain ``select_key``)."""
        raise NotImplementedError

    def selection_rule(self) -> str:
        return f"epoch with the best validation {self.select_key}; tested once"

    def fit_closed_form(self) -> Fitted:
        raise NotImplementedError(f"the {self.setting} setting has no closed-form protocol")

    def save_assets(self, fitted: Fitted) -> None:
        """Files ``predict`` needs besides the weights (class names, semantics, ...)."""

    def test(self, fitted: Fitted) -> Tested:
        raise NotImplementedError

    def chance(self, tested: Tested) -> dict[str, float]:
        """The metrics of i.i.d. random scores on the test set."""
        raise NotImplementedError

    def dataset_name(self) -> str:
        return str(self.cfg.data.name)

    def data_fingerprint(self, tested: Tested) -> str:
        raise NotImplementedError

    def plots(self, fitted: Fitted, tested: Tested, results: dict[str, Any]) -> None:
        """Figures under ``plots/``; exceptions are caught by the caller (a plot never loses a run)."""

    def save_model(self, fitted: Fitted) -> None:
        meta = {"model": self.cfg.model.name, "setting": self.setting}
        save_safetensors(self.run_dir / self.weights_file, fitted.model.state_dict(), metadata=meta)

    def restore_weights(self, model: nn.Module, path: Path) -> None:
        load_state_checked(model, path, self.cfg.model.name)

    # ------------------------------------------------------------------------------------- the protocol
    def run(self) -> dict[str, Any]:
        if self.rank != 0:  # torchrun: rank 0 owns the folder and writes its files
            return self._run()
        claim = RunFolderClaim(self.run_dir, self.resume)
        try:
            self.tracker = Tracker(self.run_dir, self.cfg.train.log_to, to_dict(self.cfg))
            try:
                return self._run()
            finally:
                self.tracker.close()
        finally:
            claim.release()

    def _run(self) -> dict[str, Any]:
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:
            atomic_write_text(self.run_dir / "config.yaml", dump_yaml(cfg))
        t0 = time.perf_counter()
        fitted = self.fit()
        if self.rank == 0:
            self.save_assets(fitted)
        tested = self.test(fitted)
        results: dict[str, Any] = {
            "setting": self.setting,
            "method": cfg.model.name,
            "dataset": self.dataset_name(),
            "metrics": tested.metrics,
            "selection": fitted.selection,
        }
        if tested.oracle is not None:
            results["oracle_test_selected"] = {
                "note": "chosen on the TEST set: for comparison with papers only, not a result",
                **tested.oracle,
            }
        results.update(
            {
                "chance": self.chance(tested),
                **tested.extra,
                "seed": cfg.seed,
                "config_hash": config_hash(cfg),
                "data_fingerprint": self.data_fingerprint(tested),
                "world": self.world,
                "versions": versions(),
                "wall_time_s": time.perf_counter() - t0,
            }
        )
        if self.rank == 0:
            if tested.scores is not None and tested.scores.nbytes <= TEST_SCORES_LIMIT:
                np.save(self.run_dir / "test_scores.npy", tested.scores.astype(np.float32))
            if fitted.model is not None and self.model_entry.fit != "closed_form":
                self.save_model(fitted)
            atomic_write_json(self.run_dir / "results.json", results)
            try:
                self.plots(fitted, tested, results)
            except Exception as exc:  # a plot must never lose a finished run
                log.warning("could not write the plots: %s", exc)
            if self.tracker is not None:
                self.tracker.log_scalars(tested.metrics, step=0, prefix="test")
                self.tracker.log_images(self.run_dir / "plots")
        return results

    def fit(self) -> Fitted:
        """Train once on the engine and keep the epoch validation chose (or the registry's other fit kinds)."""
        kind = self.model_entry.fit
        if kind == "closed_form":
            return self.fit_closed_form()
        model = self.build_model()
        if kind == "none":
            val = self.evaluate(model, -1)
            return Fitted(
                model, {"rule": "no training (zero-shot)", **{f"val_{k}": v for k, v in val.items()}}
            )
        result = self.fit_phase(
            "train", model, self.train_set(), self.loss_fn(), self.evaluate, self.cfg.train.epochs
        )
        self.restore_weights(model, self.run_dir / "train" / "best.safetensors")
        return Fitted(
            model,
            {
                "rule": self.selection_rule(),
                "epoch": result.best_epoch,
                **val_record(result.history, result.best_epoch),
            },
        )

    def fit_phase(
        self,
        phase: str,
        model: nn.Module,
        train_set: Dataset,
        loss_fn: LossFn,
        evaluate: EvalFn | None,
        epochs: int,
        labels: np.ndarray | None = None,
        *,
        select: str | None = None,
        train_cfg: TrainConfig | None = None,
    ) -> FitResult:
        """One engine run in ``run_dir/phase`` (resumed from its last checkpoint when the run is resumed), selecting
        on ``select`` (default: the task's validation key) with ``train_cfg`` (default: ``cfg.train``)."""
        phase_dir = self.run_dir / phase
        engine = Engine(train_cfg or self.cfg.train, phase_dir, seed=self.cfg.seed)
        # rank 0 owns the folder and settles an interrupted checkpoint write; the other ranks only look
        resume = self.resume and (
            settle_checkpoint(phase_dir) if self.rank == 0 else (phase_dir / CHECKPOINT_STATE).is_file()
        )
        meta = {"config": json.dumps(to_dict(self.cfg)), "phase": phase, "model": self.cfg.model.name}
        return engine.fit(
            model,
            train_set,
            loss_fn,
            evaluate,
            select=select or self.select_key,
            labels=labels,
            epochs=epochs,
            resume=resume,
            meta=meta,
            tracker=self.tracker,
        )

    @classmethod
    def run_name_dataset(cls, cfg: RunConfig) -> str:
        """The dataset part of a default run folder name, from the config alone (named before data is read)."""
        return str(cfg.data.name)

    # ------------------------------------------------------------------------------------- finished runs
    @classmethod
    def load_model(cls, run_dir: Path, cfg: RunConfig) -> Any:
        """The selected model of a finished run, from its folder alone."""
        raise NotImplementedError

    @classmethod
    def predictor(cls, run_dir: Path) -> Predictor:
        raise NotImplementedError

    def load_fitted(self, selection: dict[str, Any]) -> Fitted:
        return Fitted(type(self).load_model(self.run_dir, self.cfg).to(self.device), selection)

    def evaluate_saved(self) -> dict[str, Any]:
        """Recompute the test metrics from the saved model (the oracle block, if any, nested and labelled)."""
        results = json.loads((self.run_dir / "results.json").read_text())
        tested = self.test(self.load_fitted(results["selection"]))
        out = dict(tested.metrics)
        if tested.oracle is not None:
            out["oracle_test_selected"] = tested.oracle
        return out

    @classmethod
    def predict(cls, run_dir: Path, images: Sequence[str], classes: str, topk: int) -> list[dict[str, Any]]:
        p = cls.predictor(run_dir)
        keep = select_classes(p.names, p.seen, classes)
        score = p.scorer(keep)
        seen = set(p.seen)
        out = []
        for path in images:
            with torch.no_grad():
                s = score(path)
            vals, idx = s.topk(min(topk, len(keep)))
            top = [
                {"class": p.names[int(keep[i])], "score": float(v), "seen": int(keep[i]) in seen}
                for v, i in zip(vals.tolist(), idx.tolist())
            ]
            out.append({"image": path, "top": top})
        return out


def open_run(run_dir: Path, resume: bool = False) -> Task:
    """The task of a run folder, built from its saved config."""
    cfg = load_run_config(run_dir)
    return get_task(cfg.setting)(cfg, run_dir, resume=resume)
