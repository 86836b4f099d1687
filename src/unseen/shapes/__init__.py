"""The embedded benchmark: procedurally rendered worlds exported to the real benchmarks' on-disk layouts.

- :mod:`unseen.shapes.render`: drawing primitives (shapes, colours, patterns, clutter), shared by the worlds.
- :mod:`unseen.shapes.common`: what every world shares (atomic export, reuse checks, content and pixel
  fingerprints, the versions that drew a world, word vectors).
- :mod:`unseen.shapes.attribute_world`: species with part-located attributes, exported in the xlsa17 layout.
- :mod:`unseen.shapes.multilabel_world`: cluttered multi-object scenes, exported in the NUS-WIDE / BiAM layout.
- :mod:`unseen.shapes.compositional_world`: (state, object) pairs, exported in the czsl layout.

This package only renders and exports data and depends on no setting; the settings read the exported worlds
with their real readers.
"""

from unseen.shapes.attribute_world import (
    DATASET_NAME,
    PROPERTIES,
    WORLD_VERSION,
    AttributeWorld,
    AttributeWorldConfig,
    Species,
    attribute_names,
    attribute_word_vectors,
    build_attribute_world,
    export_attribute_world,
    render_species,
    sample_grid,
    verify_attribute_world,
)
from unseen.shapes.common import (
    WorldExistsError,
    check_render_stack,
    content_files,
    existing_world,
    load_world_meta,
    pixel_fingerprint,
    verify_world,
    world_fingerprint,
    world_record,
    write_folder_atomically,
)
from unseen.shapes.render import COLOURS, PATTERNS, SHAPES, draw_object, jitter_colour, shape_polygon

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
    "check_render_stack",
    "content_files",
    "draw_object",
    "existing_world",
    "export_attribute_world",
    "jitter_colour",
    "load_world_meta",
    "pixel_fingerprint",
    "render_species",
    "sample_grid",
    "shape_polygon",
    "verify_attribute_world",
    "verify_world",
    "world_fingerprint",
    "world_record",
    "write_folder_atomically",
]
