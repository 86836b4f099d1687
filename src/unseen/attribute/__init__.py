"""Attribute-based zero-shot learning (CZSL and GZSL on CUB, SUN, AWA2 and the embedded `shapes` world)."""

from unseen.attribute import baselines, datasets, mgmrn  # noqa: F401  (register the models and datasets)
from unseen.attribute.task import AttributeModel, AttributeTask, ClosedFormAttributeModel
from unseen.registry import register_interface

register_interface("attribute", AttributeModel)
register_interface("attribute", ClosedFormAttributeModel, fit="closed_form")

__all__ = ["AttributeTask", "AttributeModel", "ClosedFormAttributeModel"]
