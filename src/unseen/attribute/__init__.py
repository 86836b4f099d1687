"""Attribute-based zero-shot learning (CZSL and GZSL on CUB, SUN, AWA2 and the embedded `shapes` world)."""

from unseen.attribute import (  # noqa: F401  (registers the models)
    baselines,
    mgmrn,
    task,  # noqa: F401  (registers the datasets)
)
