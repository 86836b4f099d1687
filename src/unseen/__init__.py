"""unseen: zero-shot recognition toolkit (attribute, multi-label and compositional ZSL)."""

from unseen.registry import create_model, list_datasets, list_models

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "list_datasets", "__version__"]
