"""Experiment tracking: ``train.log_to`` = any of ``csv`` (always on), ``tensorboard``, ``wandb``.

Every run writes ``metrics.jsonl`` and ``metrics.csv`` per training phase (the engine does). TensorBoard and W&B
are optional extras (``pip install "unseen[tb]"`` / ``"unseen[wandb]"``); a backend chosen but not installed is an
error at the start of the run, before any work. Only rank 0 tracks.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from unseen.config import ConfigError

log = logging.getLogger("unseen")

BACKENDS = ("csv", "tensorboard", "wandb")


class Tracker:
    """Scalars per epoch and per run, and the run's plots as images, sent to the chosen backends."""

    def __init__(
        self, run_dir: str | Path, backends: list[str], config: dict[str, Any], rank: int = 0
    ) -> None:
        self.run_dir = Path(run_dir)
        self.tb: Any = None
        self.wandb: Any = None
        if rank != 0:
            return
        if "tensorboard" in backends:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError(
                    "train.log_to: tensorboard is not installed: pip install 'unseen[tb]' (or drop it from log_to)"
                ) from None
            self.tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        if "wandb" in backends:
            try:
                import wandb
            except ImportError:
                raise ConfigError(
                    "train.log_to: wandb is not installed: pip install 'unseen[wandb]' (or drop it from log_to)"
                ) from None
            # offline unless the user asks otherwise (WANDB_MODE=online): a run never needs the network
            mode: Any = os.environ.get("WANDB_MODE", "offline")
            self.wandb = wandb.init(
                project=os.environ.get("WANDB_PROJECT", "unseen"),
                name=self.run_dir.name,
                dir=str(self.run_dir),
                config=config,
                mode=mode,
                reinit=True,
            )

    def log_scalars(self, values: dict[str, Any], step: int, prefix: str = "") -> None:
        scalars = {
            f"{prefix}/{k}" if prefix else k: float(v)
            for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch"
        }
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(scalars)

    def log_images(self, folder: str | Path) -> None:
        """Every PNG under ``folder`` (the run's plots), as images."""
        files = sorted(Path(folder).glob("*.png")) if Path(folder).is_dir() else []
        if not files or (self.tb is None and self.wandb is None):
            return
        import numpy as np

        from unseen.io import read_image

        for f in files:
            if self.tb is not None:
                self.tb.add_image(f"plots/{f.stem}", np.asarray(read_image(f)), 0, dataformats="HWC")
            if self.wandb is not None:
                import wandb

                self.wandb.log({f"plots/{f.stem}": wandb.Image(str(f))})

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
