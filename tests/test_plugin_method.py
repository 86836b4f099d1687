"""A fourth attribute method = one module + one YAML + one import line, with no change to the core or to the
attribute protocol.

The "module" is the fixture below: a linear compatibility model (ALE / DeViSE-like: pooled backbone features ->
linear map W into attribute space -> scores f W A^T, cross-entropy over the seen classes) registered with
``@register_model``; the "YAML" is written next to the run and includes the packaged attribute demo base; the
"import line" is the fixture's registration. The method is then trained, evaluated and used for prediction through
``unseen.runs`` exactly like the built-in methods.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unseen import runs
from unseen.backbones import build_backbone
from unseen.cli import main
from unseen.registry import MODELS, create_model, get_model_entry, list_models, register_model

# the tiny embedded world of tests/test_attribute_run.py
WORLD = (
    "{seed: 1, n_classes: 10, n_unseen: 3, n_val: 2, images_per_class: 10, image_size: 32, n_pretrain_classes: 4, "
    "pretrain_images_per_class: 10}"
)
COMMON = [f"data.world={WORLD}", "data.pretrain_epochs=1", "train.epochs=2", "train.batch_size=16"]

BASE = runs.PACKAGE_CONFIGS / "attribute" / "_base_demo.yaml"

YAML = f"""\
# Linear compatibility (ALE/DeViSE-like) on the embedded attribute benchmark.
_base_: {BASE}
model:
  name: linear_compat
  backbone: tiny
  tiny_widths: [8, 16, 16]
  tau: 5.0
"""


# --------------------------------------------------------------------------------------------- the plugin
@dataclass
class LinearCompatConfig:
    """What the attribute protocol reads from ``cfg.model`` (name, backbone*, tiny_widths) + the method's own."""

    name: str = "linear_compat"
    backbone: str = "tiny"
    backbone_weights: str | None = None
    pretrained: bool = False
    tiny_widths: list[int] = field(default_factory=lambda: [32, 64, 128])
    tau: float = 5.0  # scale of the (normalised) compatibility scores


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors gain nothing from intra-op threads (and lose seconds to spinning workers on a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def linear_compat():
    """Register the method for this module's tests only; the registry is process-global, so it is removed after."""
    key = ("attribute", "linear_compat")
    assert key not in MODELS

    @register_model("linear_compat", setting="attribute", config=LinearCompatConfig)
    class LinearCompat(nn.Module):
        """Linear compatibility: s(x, c) = tau * <W f(x) / |W f(x)|, a_c / |a_c|> on pooled C5 features."""

        def __init__(
            self, cfg: LinearCompatConfig, attribute_embeddings: torch.Tensor | None = None, **_: Any
        ) -> None:
            super().__init__()
            if attribute_embeddings is None:
                raise ValueError(f"{cfg.name}: attribute_embeddings (A x D) give the number of attributes")
            self.cfg = cfg
            self.backbone = build_backbone(
                cfg.backbone,
                weights=cfg.backbone_weights,
                pretrained=cfg.pretrained,
                tiny_widths=cfg.tiny_widths,
            )
            self.W = nn.Linear(self.backbone.out_channels[-1], int(attribute_embeddings.shape[0]), bias=False)

        def forward(
            self,
            images: torch.Tensor,
            class_attributes: torch.Tensor,
            targets: torch.Tensor | None = None,
            levels: Any = None,
            **_: Any,
        ) -> dict[str, Any]:
            f = self.backbone(images)[-1].mean((2, 3))
            a_hat = F.normalize(self.W(f), dim=-1)
            scores = self.cfg.tau * a_hat @ F.normalize(class_attributes.float(), dim=-1).t()
            out: dict[str, Any] = {"scores": scores}
            if targets is not None:
                loss = F.cross_entropy(scores, targets.long())
                out.update(loss=loss, logs={"ce": float(loss.detach())})
            return out

    yield LinearCompat
    del MODELS[key]


@pytest.fixture(scope="module")
def plugin_run(linear_compat, tmp_path_factory):
    root = tmp_path_factory.mktemp("plugin")
    config = root / "linear_compat.yaml"
    config.write_text(YAML)
    res = runs.train(config, [*COMMON, f"output_dir={root / 'runs'}", "name=lc"])
    return Path(res["run_dir"]), res


# --------------------------------------------------------------------------------------------- tests
def test_registered_with_the_others(linear_compat, capsys):
    assert "linear_compat" in list_models("attribute")
    assert {"mgmrn", "attn1", "eszsl"} <= set(list_models("attribute"))  # the built-ins are still there
    assert get_model_entry("linear_compat", "attribute").fit == "engine"
    model = create_model(
        "linear_compat", {"tiny_widths": [8, 16, 16]}, "attribute", attribute_embeddings=torch.zeros(6, 3)
    )
    out = model(torch.randn(2, 3, 32, 32), torch.rand(4, 6), targets=torch.tensor([0, 3]))
    assert out["scores"].shape == (2, 4) and torch.isfinite(out["loss"])
    assert main(["list"]) == 0
    assert "linear_compat" in capsys.readouterr().out


def test_trains_through_the_attribute_protocol(plugin_run):
    run_dir, res = plugin_run
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["method"] == "linear_compat" and saved["setting"] == "attribute"
    m = saved["metrics"]
    for k in ("czsl_top1", "S", "U", "H"):
        assert 0.0 <= m[k] <= 1.0, (k, m[k])
    sel = saved["selection"]
    assert "validation" in sel["rule"]
    assert 0 <= sel["epoch"] < 2 and sel["gamma_used"] == sel["gamma"]
    assert "TEST" in saved["oracle_test_selected"]["note"]
    for f in (
        "config.yaml",
        "semantics.safetensors",
        "classes.json",
        "final/last.safetensors",
        "calib/best.safetensors",
    ):
        assert (run_dir / f).is_file(), f
    # the resolved config records the method's own keys and the backbone the world suggested
    cfg_text = (run_dir / "config.yaml").read_text()
    assert "linear_compat" in cfg_text and "tau: 5.0" in cfg_text and "backbone_weights: /" in cfg_text
    assert res["metrics"]["H"] == m["H"]


def test_eval_reproduces_the_results(plugin_run):
    run_dir, res = plugin_run
    again = runs.evaluate_run(run_dir)
    for k in ("czsl_top1", "S", "U", "H"):
        assert again[k] == pytest.approx(res["metrics"][k], abs=1e-6), k


def test_predict_ranks_classes(plugin_run):
    run_dir, _ = plugin_run
    info = json.loads((run_dir / "classes.json").read_text())
    from unseen.attribute.task import AttributeTask
    from unseen.config import load_run_config

    d = AttributeTask(load_run_config(run_dir), run_dir).data
    img = d.image_files[int(d.test_unseen_loc[0])]
    out = runs.predict(run_dir, [img], classes="all", topk=4)
    assert len(out) == 1 and out[0]["image"] == img
    top = out[0]["top"]
    assert len(top) == 4
    assert all(t["class"] in info["class_names"] for t in top)
    scores = [t["score"] for t in top]
    assert scores == sorted(scores, reverse=True) and np.isfinite(scores).all()
    unseen = runs.predict(run_dir, [img], classes="unseen", topk=10)[0]["top"]
    assert len(unseen) == len(d.unseen_classes) and not any(t["seen"] for t in unseen)
