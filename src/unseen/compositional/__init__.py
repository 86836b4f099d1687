"""Compositional zero-shot learning (MIT-States, UT-Zappos, C-GQA; closed and open world) on CLIP: Refiner-R, CSP,
zero-shot CLIP, the czsl readers and the streaming evaluator."""

from unseen.compositional import baselines, datasets, refiner  # noqa: F401  (register the models and datasets)
from unseen.compositional.task import CompositionalModel, CompositionalTask
from unseen.registry import register_interface

register_interface("compositional", CompositionalModel)
register_interface("compositional", CompositionalModel, fit="none")

__all__ = ["CompositionalTask", "CompositionalModel"]
