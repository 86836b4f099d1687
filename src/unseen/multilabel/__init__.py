"""Multi-label zero-shot learning (NUS-WIDE, Open Images V4): Epsilon-R, the BiAM and global-linear baselines, the
BiAM-layout readers, masked metrics, and the embedded multi-label world."""

from unseen.multilabel import baselines, datasets, epsilon  # noqa: F401  (register the models and datasets)
from unseen.multilabel.task import MultilabelModel, MultilabelTask
from unseen.registry import register_interface

register_interface("multilabel", MultilabelModel)

__all__ = ["MultilabelTask", "MultilabelModel"]
