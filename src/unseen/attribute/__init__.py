"""Attribute-based zero-shot learning (CZSL and GZSL on CUB, SUN, AWA2 and the embedded `shapes` world)."""

from unseen.attribute import baselines, mgmrn  # noqa: F401  (registers the models)
from unseen.attribute import task  # noqa: F401  (registers the datasets)
