"""Compositional zero-shot learning (MIT-States, UT-Zappos, C-GQA; closed and open world) on CLIP: Refiner-R, CSP,
zero-shot CLIP, the czsl readers and the streaming evaluator."""

from unseen.compositional import baselines, refiner, task  # noqa: F401  (registers the models and datasets)
