"""Create registered models by name and score a batch, one per setting.

Every model takes the class semantics as an input, not as weights: the same model scores seen classes while
training and unseen ones at test time. Config overrides are validated against the model's config dataclass
(a typo is an error naming the valid keys). Small widths keep this fast on a CPU; drop the overrides to get
the paper-size defaults.

    python examples/create_model.py
"""

from __future__ import annotations

import torch

from unseen import create_model, list_models
from unseen.compositional.clip import create_clip

torch.manual_seed(0)
print("registered:", {s: list_models(s) for s in ("attribute", "multilabel", "compositional")})

# attribute: images + per-class attribute vectors (C x A) -> B x C scores
n_attributes, n_classes = 12, 5
mgmrn = create_model(
    "mgmrn",
    {"backbone": "tiny", "tiny_widths": [8, 16, 32], "width": 32, "model_dim": 16, "n_parts": 2},
    setting="attribute",
    attribute_embeddings=torch.randn(n_attributes, 8),  # one word vector per attribute (the VSD queries)
).eval()
with torch.no_grad():
    out = mgmrn(torch.randn(2, 3, 64, 64), torch.rand(n_classes, n_attributes))
print(f"mgmrn: scores {tuple(out['scores'].shape)} (images x classes)")

# multi-label: region features (B x regions x channels) + label embeddings (L x D) -> B x L scores
epsilon = create_model(
    "epsilon",
    {"dim": 32, "heads": 2, "layers": 1},
    setting="multilabel",
    in_dim=64,  # channels of a region feature (512 for BiAM's VGG-19 conv5_4)
    n_tokens=49,  # regions per image (196 for 14 x 14)
    embed_dim=300,  # width of the label embeddings (GloVe: 300)
).eval()
with torch.no_grad():
    out = epsilon(torch.randn(2, 49, 64), torch.randn(7, 300))
print(f"epsilon: scores {tuple(out['scores'].shape)} (images x labels)")

# compositional: a frozen CLIP (here the packaged test architecture with random weights) + state/object names;
# pairs are (state index, object index) rows -> B x P scores
states, objects = ["red", "old", "wet"], ["dog", "car", "tree"]
refiner = create_model(
    "refiner",
    {"clip_arch": "unseen-test-clip", "n_queries": 4, "refine_blocks": 1},
    setting="compositional",
    clip_model=create_clip("unseen-test-clip"),
    attr_names=states,
    obj_names=objects,
).eval()
size = refiner.clip.visual.image_size
size = size[0] if isinstance(size, (tuple, list)) else size
pairs = torch.tensor([[0, 0], [1, 1], [2, 2], [0, 2]])
with torch.no_grad():
    out = refiner(torch.randn(2, 3, size, size), pairs)
best = out["scores"].argmax(1).tolist()
print(
    f"refiner: scores {tuple(out['scores'].shape)} (images x pairs); top pair of image 0: "
    f"{states[int(pairs[best[0], 0])]} {objects[int(pairs[best[0], 1])]}"
)
