"""The embedded benchmark: procedurally rendered worlds exported to the real benchmarks' on-disk layouts.

- :mod:`unseen.shapes.render`: drawing primitives (shapes, colours, patterns, clutter), shared by the worlds.
- :mod:`unseen.shapes.attribute_world`: species with part-located attributes, exported in the xlsa17 layout.
"""

from unseen.shapes.attribute_world import (
    DATASET_NAME,
    PROPERTIES,
    WORLD_VERSION,
    AttributeWorld,
    AttributeWorldConfig,
    Species,
    WorldExistsError,
    attribute_names,
    attribute_word_vectors,
    build_attribute_world,
    export_attribute_world,
    load_world_meta,
    render_species,
    sample_grid,
    verify_attribute_world,
)
from unseen.shapes.render import COLOURS, PATTERNS, SHAPES, draw_object, shape_polygon

__all__ = [
    "AttributeWorld",
    "AttributeWorldConfig",
    "COLOURS",
    "DATASET_NAME",
    "PATTERNS",
    "PROPERTIES",
    "SHAPES",
    "Species",
    "WORLD_VERSION",
    "WorldExistsError",
    "attribute_names",
    "attribute_word_vectors",
    "build_attribute_world",
    "draw_object",
    "export_attribute_world",
    "load_world_meta",
    "render_species",
    "sample_grid",
    "shape_polygon",
    "verify_attribute_world",
]
