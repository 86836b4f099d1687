"""Mg-MRN, the single-level attention baseline and ESZSL."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unseen.attribute.baselines import ESZSL, Attn1, Attn1Config, ESZSLConfig, eszsl_solve
from unseen.attribute.mgmrn import GroupingUnit, MgMRN, MgMRNConfig
from unseen.backbones import build_backbone
from unseen.config import ConfigError, build_dataclass
from unseen.registry import get_model_entry

A_CUB = 312


# --------------------------------------------------------------------------------------------- full scale
@pytest.fixture(scope="module")
def resnet101():
    torch.manual_seed(0)
    return build_backbone("resnet101").eval()


@pytest.mark.slow  # paper-size ResNet-101 at 448 px
def test_shapes_parts_resnet101_448(resnet101):
    """Shape walk-through, level by level, with the default (`parts`) configuration."""
    torch.manual_seed(0)
    model = MgMRN(MgMRNConfig(), torch.randn(A_CUB, 300), backbone=resnet101).eval()
    assert model.n_down == {1: 2, 2: 1, 3: 0}
    assert model.scam["1"].proj.in_channels == 4096 and model.scam["2"].proj.in_channels == 2048
    assert "3" not in model.scam
    assert [len(model.mgm[k].blocks) for k in "123"] == [2, 1, 1]
    C = 150
    with torch.no_grad():
        out = model(
            torch.randn(1, 3, 448, 448),
            torch.rand(C, A_CUB),
            return_attention=True,
            return_intermediates=True,
        )
    it = out["intermediates"]
    assert [tuple(m.shape) for m in it["C"]] == [(1, 512, 56, 56), (1, 1024, 28, 28), (1, 2048, 14, 14)]
    for lv in (1, 2, 3):
        assert tuple(it["F"][lv].shape) == (1, 2048, 14, 14)
        assert tuple(it["Z"][lv].shape) == (1, 5, 2048)
        assert tuple(it["assign"][lv].shape) == (1, 5, 196)
    assert sorted(it["R"]) == [1, 2]
    assert tuple(it["R"][1].shape) == tuple(it["R"][2].shape) == (1, 2048, 14, 14)
    assert [tuple(it["T"][lv].shape) for lv in (1, 2, 3)] == [(1, 397, 2048), (1, 397, 2048), (1, 201, 2048)]
    assert [tuple(a.shape) for a in out["attention"]] == [(1, A_CUB, 397), (1, A_CUB, 397), (1, A_CUB, 201)]
    assert out["grid"] == (14, 14)
    assert out["token_layout"][0] == [("F", 196), ("R", 196), ("Z", 5)]
    assert out["token_layout"][2] == [("F", 196), ("Z", 5)]
    assert [tuple(p.shape) for p in out["attr_preds"]] == [(1, A_CUB)] * 3
    assert tuple(out["scores"].shape) == (1, C) and out["levels"] == [1, 2, 3]
    torch.testing.assert_close(out["scores"], sum(out["level_scores"]))
    assert float(out["scores"].abs().max()) <= 3 * 20.0 + 1e-4  # range +-3 tau
    torch.testing.assert_close(out["attention"][0].sum(-1), torch.ones(1, A_CUB))


@pytest.mark.slow  # paper-size ResNet-101 at 448 px
def test_shapes_collapsed_resnet101_448(resnet101):
    """`collapsed` (release): no part tokens, centres on C_in. Narrow levels keep the test fast (token counts
    do not depend on the width)."""
    torch.manual_seed(0)
    cfg = MgMRNConfig(grouping="collapsed", width=256, model_dim=64)
    model = MgMRN(cfg, torch.randn(A_CUB, 300), backbone=resnet101).eval()
    assert [tuple(model.mgm[k].group.centres.shape) for k in "123"] == [(5, 512), (5, 1024), (5, 2048)]
    with torch.no_grad():
        out = model(
            torch.randn(1, 3, 448, 448),
            torch.rand(7, A_CUB),
            return_attention=True,
            return_intermediates=True,
        )
    it = out["intermediates"]
    assert [tuple(it["T"][lv].shape) for lv in (1, 2, 3)] == [(1, 392, 256), (1, 392, 256), (1, 196, 256)]
    assert [tuple(a.shape) for a in out["attention"]] == [(1, A_CUB, 392), (1, A_CUB, 392), (1, A_CUB, 196)]
    assert it["Z"] == {} and tuple(it["assign"][1].shape) == (1, 5, 56 * 56)


# --------------------------------------------------------------------------------------------- grouping
def test_collapsed_grouping_is_x_over_k():
    torch.manual_seed(0)
    unit = GroupingUnit(64, 5)
    assert float(unit.centres.detach().min()) >= np.float32(1e-5) and torch.all(unit.smooth.detach() == 0)
    for scale in (0.1, 1.0, 30.0):
        x = torch.relu(torch.randn(2, 64, 7, 9)) * scale
        out, a = unit.collapsed(x)
        torch.testing.assert_close(a.sum(1), torch.ones(2, 63))
        torch.testing.assert_close(out, x / 5, rtol=1e-6, atol=0)


def test_parts_tokens_are_assignment_weighted_means():
    torch.manual_seed(0)
    unit = GroupingUnit(32, 5)
    f = torch.relu(torch.randn(3, 32, 4, 6)) * 50  # magnitudes of post-ReLU level maps
    z, a = unit.parts(f)
    assert tuple(z.shape) == (3, 5, 32) and tuple(a.shape) == (3, 5, 24)
    torch.testing.assert_close(a.sum(1), torch.ones(3, 24))
    assert float(a.detach().max()) < 0.9  # normalised distances: soft at init, no dead centres
    flat = f.flatten(2)  # B x C x N
    ref = torch.einsum("bkn,bcn->bkc", a, flat) / (a.sum(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(z, ref)
    fh, ch = F.normalize(flat, dim=1), F.normalize(unit.centres, dim=1)
    d2 = ((fh.unsqueeze(1) - ch[None, :, :, None]) ** 2).sum(2)
    torch.testing.assert_close(a, torch.softmax(-d2 / 0.5, dim=1))


# --------------------------------------------------------------------------------------------- tiny models
A, C, E = 12, 6, 16


def tiny_cfg(**kw) -> MgMRNConfig:
    base = {"backbone": "tiny", "tiny_widths": [16, 24, 32], "width": 32, "model_dim": 16}
    base.update(kw)
    return build_dataclass(MgMRNConfig, base)


def tiny_model(seed: int = 0, **kw) -> MgMRN:
    torch.manual_seed(seed)
    return MgMRN(tiny_cfg(**kw), torch.randn(A, E))


def tiny_batch(n: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, 3, 64, 64, generator=g),
        torch.rand(C, A, generator=g),
        torch.randint(0, C, (n,), generator=g),
    )


def _has_grad(module: torch.nn.Module) -> bool:
    return any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in module.parameters())


def _no_grad(module: torch.nn.Module) -> bool:
    return all(p.grad is None for p in module.parameters())


def test_stop_gradient_l1_does_not_reach_coarser_rfms():
    model = tiny_model().train()
    x, attrs, y = tiny_batch()
    out = model(x, attrs, targets=y)  # joint forward: F2, F3 are in the graph (with grad, for L2, L3)
    l1 = F.cross_entropy(out["level_scores"][0], y) + out["attr_preds"][0].pow(2).mean()
    l1.backward()
    assert _has_grad(model.mgm["1"]) and _has_grad(model.scam["1"]) and _has_grad(model.vsd["1"])
    for name in ("2", "3"):
        assert _no_grad(model.mgm[name]) and _no_grad(model.vsd[name])
    assert _no_grad(model.scam["2"])
    assert _has_grad(model.backbone.layer2)
    assert _no_grad(model.backbone.layer3) and _no_grad(model.backbone.layer4)

    undetached = tiny_model(mrm_detach=False).train()
    out = undetached(x, attrs, targets=y)
    out["level_scores"][0].sum().backward()
    assert _has_grad(undetached.mgm["2"]) and _has_grad(undetached.mgm["3"])
    assert _has_grad(undetached.backbone.layer4)


SEQ_EXPECT = {
    0: (
        {"mgm.1", "scam.1", "vsd.1", "backbone.layer2"},
        {"mgm.2", "mgm.3", "scam.2", "vsd.2", "vsd.3", "backbone.layer3", "backbone.layer4"},
    ),
    1: (
        {"mgm.2", "scam.2", "vsd.2", "backbone.layer2", "backbone.layer3"},
        {"mgm.1", "mgm.3", "scam.1", "vsd.1", "vsd.3", "backbone.layer4"},
    ),
    2: (
        {"mgm.3", "vsd.3", "backbone.layer2", "backbone.layer3", "backbone.layer4"},
        {"mgm.1", "mgm.2", "scam.1", "scam.2", "vsd.1", "vsd.2"},
    ),
}


def test_sequential_substeps_reach_the_right_parameters():
    model = tiny_model(step_mode="sequential").train()
    assert model.train_substeps() == [[0], [1], [2]]
    x, attrs, y = tiny_batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-5)
    for sub in model.train_substeps():
        before = copy.deepcopy(model.state_dict())
        opt.zero_grad(set_to_none=True)
        out = model(x, attrs, targets=y, levels=sub)
        assert out["levels"] == [sub[0] + 1] and set(out["logs"]) == {
            f"ce_l{sub[0] + 1}",
            f"mse_l{sub[0] + 1}",
        }
        out["loss"].backward()
        reached, untouched = SEQ_EXPECT[sub[0]]
        for name in reached:
            assert _has_grad(model.get_submodule(name)), (sub, name)
        for name in untouched:
            assert _no_grad(model.get_submodule(name)), (sub, name)
        opt.step()
        after = model.state_dict()
        for name in untouched:
            for k in before:
                if k.startswith(name + ".") and "running_" not in k and "num_batches" not in k:
                    assert torch.equal(before[k], after[k]), (sub, k)


def test_joint_and_sequential_agree_on_the_first_substep():
    joint = tiny_model(seed=3).train()
    seq = tiny_model(seed=4, step_mode="sequential").train()
    seq.load_state_dict(joint.state_dict())
    assert joint.train_substeps() == [None]
    x, attrs, y = tiny_batch(seed=1)
    out_j = joint(x, attrs, targets=y)
    out_s = seq(x, attrs, targets=y, levels=seq.train_substeps()[0])
    lam = joint.cfg.lam
    l1 = out_j["logs"]["ce_l1"] + lam * out_j["logs"]["mse_l1"]
    assert float(out_s["loss"].detach()) == pytest.approx(l1, rel=1e-5)
    torch.testing.assert_close(out_s["level_scores"][0], out_j["level_scores"][0], rtol=1e-5, atol=1e-5)
    total = sum(out_j["logs"][f"ce_l{i}"] + lam * out_j["logs"][f"mse_l{i}"] for i in (1, 2, 3))
    assert float(out_j["loss"].detach()) == pytest.approx(total, rel=1e-5)


def test_loss_matches_the_spec_formula():
    model = tiny_model(lam=0.7).eval()
    x, attrs, y = tiny_batch()
    with torch.no_grad():
        out = model(x, attrs, targets=y)
    for i, lv in enumerate((1, 2, 3)):
        pred = out["attr_preds"][i]
        s = (
            20.0
            * (pred / (pred.norm(dim=1, keepdim=True) + 1e-10))
            @ (attrs / (attrs.norm(dim=1, keepdim=True) + 1e-10)).t()
        )
        torch.testing.assert_close(out["level_scores"][i], s)
        goal = attrs[y] / (attrs[y].norm(dim=1, keepdim=True) + 1e-10)
        mse = ((pred / (pred.norm(dim=1, keepdim=True) + 1e-10) - goal) ** 2).mean()
        assert out["logs"][f"mse_l{lv}"] == pytest.approx(float(mse), rel=1e-5)
        assert out["logs"][f"ce_l{lv}"] == pytest.approx(float(F.cross_entropy(s, y)), rel=1e-5)


def test_tiny_model_trains_and_loss_decreases():
    model = tiny_model(seed=5).train()
    x, attrs, y = tiny_batch(n=8, seed=2)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(12):
        out = model(x, attrs, targets=y)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0], losses


def test_level_subsets_weights_and_attention_grid():
    model = tiny_model(level_weights=[0.5, 1.0, 2.0]).eval()
    x, attrs, _ = tiny_batch()
    with torch.no_grad():
        out = model(x, attrs, return_attention=True)
        part = model(x, attrs, levels=[2])
    s = out["level_scores"]
    torch.testing.assert_close(out["scores"], 0.5 * s[0] + s[1] + 2.0 * s[2])
    torch.testing.assert_close(part["scores"], 2.0 * s[2])
    h, w = out["grid"]
    assert (h, w) == (4, 4)
    att = out["attention"][0][..., : h * w].reshape(4, A, h, w)
    assert att.shape == (4, A, 4, 4)
    with pytest.raises(ValueError, match="positions"):
        model(x, attrs, levels=[3])


def test_only_the_needed_modules_run():
    model = tiny_model().train()
    x, attrs, y = tiny_batch()
    calls: list[str] = []
    for name in ("mgm.1", "mgm.2", "mgm.3", "scam.1", "scam.2", "vsd.1", "vsd.2", "vsd.3", "backbone.layer4"):
        model.get_submodule(name).register_forward_hook(lambda *a, n=name: calls.append(n))
    model(x, attrs, targets=y, levels=[2])  # level 3 alone: no C3/C4 RFMs, no SCAM
    assert sorted(calls) == ["backbone.layer4", "mgm.3", "vsd.3"]
    calls.clear()
    model(x, attrs, targets=y, levels=[0])  # level 1: F2, F3 (no graph) feed R1
    assert sorted(calls) == ["backbone.layer4", "mgm.1", "mgm.2", "mgm.3", "scam.1", "vsd.1"]


def test_downsampling_is_the_release_bilinear_resize():
    from unseen.attribute.mgmrn import ConvBlock

    block = ConvBlock(8, 32, downsample=True)
    x = torch.randn(2, 8, 56, 56)
    with torch.no_grad():
        y = F.relu(block.norm(block.conv(x)))
        ref = F.interpolate(y, scale_factor=0.5, mode="bilinear", align_corners=True)
        torch.testing.assert_close(block(x), ref, rtol=0, atol=0)


def test_bidirectional_and_avgpool_options():
    model = tiny_model(mrm_bidirectional=True, down="avgpool").eval()
    assert model.sources == {1: [2, 3], 2: [3], 3: [1, 2]}
    x, attrs, _ = tiny_batch()
    with torch.no_grad():
        out = model(x, attrs, return_intermediates=True)
    assert tuple(out["intermediates"]["T"][3].shape) == (4, 16 + 16 + 5, 32)


def test_amp_bfloat16_forward_is_finite():
    model = tiny_model().train()
    x, attrs, y = tiny_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, attrs, targets=y)
    assert out["scores"].dtype == torch.float32 and torch.isfinite(out["loss"])
    out["loss"].backward()


def test_packed_maps_backbone_gives_the_same_scores():
    from unseen.features import PackedMaps

    model = tiny_model().eval()
    x, attrs, _ = tiny_batch()
    with torch.no_grad():
        ref = model(x, attrs)["scores"]
        maps = model.backbone(x)
        rows = torch.cat([m.flatten(1) for m in maps], 1)
        model.backbone = PackedMaps([tuple(m.shape[1:]) for m in maps], (16, 24, 32))
        torch.testing.assert_close(model(rows, attrs)["scores"], ref)


def test_config_schema_and_registration():
    entry = get_model_entry("mgmrn", "attribute")
    assert entry.builder is MgMRN and entry.config is MgMRNConfig
    assert get_model_entry("attn1", "attribute").builder is Attn1
    assert get_model_entry("eszsl", "attribute").builder is ESZSL
    assert all(get_model_entry(n, "attribute").setting == "attribute" for n in ("mgmrn", "attn1", "eszsl"))
    cfg = MgMRNConfig()
    assert (cfg.width, cfg.model_dim, cfg.levels, cfg.n_parts, cfg.grouping, cfg.step_mode) == (
        2048,
        1024,
        [1, 2, 3],
        5,
        "parts",
        "joint",
    )
    assert cfg.refinement and cfg.mrm_detach and not cfg.mrm_bidirectional and not cfg.attention_scale
    for bad, match in (
        ({"grouping": "soft"}, "grouping"),
        ({"levels": [3, 1]}, "levels"),
        ({"step_mode": "x"}, "step_mode"),
        ({"level_weights": [1, 1]}, "level_weights"),
        ({"n_level": 1}, "unknown key"),
    ):
        with pytest.raises(ConfigError, match=match):
            build_dataclass(MgMRNConfig, bad, "model")
    with pytest.raises(ValueError, match="attribute_embeddings"):
        MgMRN(tiny_cfg(), None)


def test_attn1_is_single_level_mgmrn():
    cfg = build_dataclass(
        Attn1Config, {"backbone": "tiny", "tiny_widths": [16, 24, 32], "width": 32, "model_dim": 16}
    )
    assert cfg.name == "attn1" and cfg.levels == [3] and cfg.grouping == "none" and not cfg.refinement
    torch.manual_seed(0)
    model = Attn1(cfg, torch.randn(A, E))
    assert isinstance(model, MgMRN) and list(model.mgm) == ["3"] and len(model.scam) == 0
    assert model.mgm["3"].group is None and model.train_substeps() == [None]
    x, attrs, y = tiny_batch()
    out = model(x, attrs, targets=y, return_attention=True)
    assert out["levels"] == [3] and tuple(out["attention"][0].shape) == (4, A, 16)
    torch.testing.assert_close(out["scores"], out["level_scores"][0])
    out["loss"].backward()


# --------------------------------------------------------------------------------------------- ESZSL
def test_eszsl_closed_form_equals_direct_solve():
    rng = np.random.default_rng(0)
    X, S = rng.normal(size=(60, 9)), rng.normal(size=(5, 4))
    labels = rng.integers(0, 5, 60)
    model = ESZSL(ESZSLConfig(), alpha=0.5, beta=-1.0).fit(X, labels, S)
    Y = -np.ones((60, 5))
    Y[np.arange(60), labels] = 1
    g, lam = 10**0.5, 10**-1.0
    V = np.linalg.solve(X.T @ X + g * np.eye(9), X.T @ Y @ S)
    V = np.linalg.solve((S.T @ S + lam * np.eye(4)).T, V.T).T
    np.testing.assert_allclose(model.V, V, rtol=1e-9, atol=1e-10)
    S_all = rng.normal(size=(8, 4))
    np.testing.assert_allclose(model.scores(X[:3], S_all), X[:3] @ V @ S_all.T, rtol=1e-9)


def test_eszsl_recovers_a_planted_map_and_classifies_unseen():
    rng = np.random.default_rng(1)
    X, S, V_true = rng.normal(size=(200, 10)), rng.normal(size=(7, 5)), rng.normal(size=(10, 5))
    V = eszsl_solve(X, X @ V_true @ S.T, S, 1e-9, 1e-9)
    np.testing.assert_allclose(V, V_true, rtol=1e-5, atol=1e-6)

    # features generated linearly from (unit-norm) class attributes; unseen classes recognised through their
    # attributes (chance: 0.1)
    rng = np.random.default_rng(1)
    n_cls, n_seen, D, Aa = 40, 30, 40, 16
    S_all = rng.normal(size=(n_cls, Aa))
    S_all /= np.linalg.norm(S_all, axis=1, keepdims=True)
    W = rng.normal(size=(D, Aa))
    labels = np.repeat(np.arange(n_cls), 20)
    feats = S_all[labels] @ W.T + 0.05 * rng.normal(size=(len(labels), D))
    seen = labels < n_seen
    model = ESZSL(alpha=0.0, beta=0.0).fit(feats[seen], labels[seen], S_all[:n_seen])
    scores = model.scores(feats[~seen], S_all[n_seen:])
    acc = float(np.mean(scores.argmax(1) == labels[~seen] - n_seen))
    assert acc > 0.8, acc


def test_eszsl_grid_and_errors():
    assert len(ESZSL.grid()) == 49 and (-3.0, 3.0) in ESZSL.grid()
    cfg = ESZSLConfig(search=False, alpha=2.0, beta=1.0)
    assert ESZSL.grid(cfg) == [(2.0, 1.0)]
    m = ESZSL(cfg)
    assert (m.alpha, m.beta) == (2.0, 1.0)
    with pytest.raises(RuntimeError, match="fit"):
        m.scores(np.zeros((2, 3)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="labels must index"):
        m.fit(np.zeros((3, 4)), np.array([0, 1, 5]), np.ones((3, 2)))


# --------------------------------------------------------------------------------------------- FLOP model
# benchmarks/bench_mgmrn_step.py bounds the achievable speed-ups with MAC counts taken on meta tensors with a
# stand-in loss; these tests hold that model to real CPU runs and to hand counts.
def _bench():
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_mgmrn_step.py"
    spec = importlib.util.spec_from_file_location("_bench_mgmrn_step", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _gmac(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops() / 2e9


def test_meta_tensors_give_the_cpu_shapes():
    """The model runs on meta tensors (autocast guards skipped) and gives the shapes of a real CPU run."""
    ref = tiny_model()
    x, attrs, _ = tiny_batch(n=2)
    with torch.no_grad():
        want = ref(x, attrs, return_attention=True, return_intermediates=True)
    with torch.device("meta"):
        meta = tiny_model()
    meta.load_state_dict(ref.state_dict(), assign=True)
    meta = meta.to("meta")
    got = meta(x.to("meta"), attrs.to("meta"), return_attention=True, return_intermediates=True)
    assert got["scores"].device.type == "meta" and got["scores"].shape == want["scores"].shape
    assert [a.shape for a in got["attention"]] == [a.shape for a in want["attention"]]
    for key in ("F", "Z", "assign", "R", "T"):
        assert {k: v.shape for k, v in got["intermediates"][key].items()} == {
            k: v.shape for k, v in want["intermediates"][key].items()
        }


def test_level1_granularity_convs_at_paper_size_are_59_gmac():
    """Hand count of the level-1 block (512->2048 3x3 at 56x56, 2048->2048 3x3 at 28x28) per 448-px image."""
    from unseen.attribute.mgmrn import LevelModule

    with torch.device("meta"):
        level1 = LevelModule(512, 2048, 2, "none", 5, "bilinear")
        f = level1.blocks  # grouping 'none': the convs alone
        got = _gmac(lambda: f(torch.empty(1, 512, 56, 56)))
    hand = (2048 * 512 * 9 * 56 * 56 + 2048 * 2048 * 9 * 28 * 28) / 1e9
    assert got == pytest.approx(hand, rel=1e-12) and 59.1 < hand < 59.3


@pytest.mark.slow  # ~6,000 dispatched ops through FlopCounterMode (about a minute on a loaded 2-core VM)
def test_flop_model_equals_counts_of_real_cpu_steps():
    """The benchmark's meta/stand-in-loss counts equal the counts of the real steps (real loss, optimizer) on CPU."""
    import argparse

    bench = _bench()
    args = argparse.Namespace(
        backbone="tiny", image_size=64, width=16, model_dim=8, attributes=A, classes=C, batch=1, amp=False
    )
    fm = bench.flop_model(args)
    x = torch.randn(1, 3, 64, 64)
    attrs, y = torch.rand(C, A), torch.tensor([2])

    def real(step_mode: str, release: bool = False, cached: bool = False) -> float:
        m = bench.make_model(args, step_mode, A).train()
        inp = x
        if cached:
            from unseen.features import PackedMaps

            with torch.no_grad():
                maps = m.backbone(x)
            m.backbone = PackedMaps([tuple(t.shape[1:]) for t in maps], m.backbone.out_channels)
            inp = torch.cat([t.flatten(1) for t in maps], 1)
        opt = torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9)
        return _gmac(lambda: bench.train_step(m, opt, inp, y, attrs, False, release=release))

    assert fm["joint"] == pytest.approx(real("joint"), rel=1e-9)
    assert fm["release"] == pytest.approx(real("sequential", release=True), rel=1e-9)
    assert fm["sequential"] == pytest.approx(real("sequential"), rel=1e-9)
    assert fm["cached_joint"] == pytest.approx(real("joint", cached=True), rel=1e-9)
    assert fm["ceiling_joint_over_release"] == pytest.approx(fm["release"] / fm["joint"])
    # a joint step is one forward and one backward; the backward costs between 1x (no input gradients) and 2x
    assert 2 * fm["forward"] < fm["joint"] <= 3 * fm["forward"]


# --------------------------------------------------------------------------------------------- ablation switch
def test_pooled_attribute_head_replaces_only_the_vsd():
    """attribute_head=pooled: a Linear of the mean token instead of each level's VSD; every other module is built
    with the same initial weights as the default (the VSDs are built last), and the default still has VSDs."""
    default, pooled = tiny_model(), tiny_model(attribute_head="pooled")
    assert MgMRNConfig().attribute_head == "vsd" and not hasattr(default, "pooled")
    assert default.attribute_heads is default.vsd and pooled.attribute_heads is pooled.pooled
    assert not hasattr(pooled, "vsd") and sorted(pooled.pooled) == ["1", "2", "3"]
    shared = {k: v for k, v in default.state_dict().items() if not k.startswith("vsd.")}
    other = {k: v for k, v in pooled.state_dict().items() if not k.startswith("pooled.")}
    assert list(shared) == list(other)
    for k in shared:
        assert torch.equal(shared[k], other[k]), k
    x, attrs, y = tiny_batch()
    pooled.eval()
    with torch.no_grad():
        out = pooled(x, attrs, return_attention=True, return_intermediates=True)
    for i, lv in enumerate((1, 2, 3)):
        t = out["intermediates"]["T"][lv]  # B x N x W, the tokens the VSD would attend over
        head = pooled.pooled[str(lv)].proj
        torch.testing.assert_close(out["attr_preds"][i], t.mean(1) @ head.weight.t() + head.bias)
        torch.testing.assert_close(out["level_scores"][i], pooled.head(out["attr_preds"][i], attrs))
        att = out["attention"][i]
        assert att.shape == (4, A, t.shape[1])
        torch.testing.assert_close(att, torch.full_like(att, 1.0 / t.shape[1]))
    # the read-out is trained, and the word vectors no longer enter the scores
    pooled.train()
    pooled(x, attrs, targets=y)["loss"].backward()
    assert all(_has_grad(pooled.pooled[k]) for k in ("1", "2", "3"))
    pooled.eval()  # (the training forward moved the backbone's BatchNorm statistics)
    with torch.no_grad():
        before = pooled(x, attrs)["scores"]
        pooled.attribute_embeddings.normal_()
        torch.testing.assert_close(pooled(x, attrs)["scores"], before)
    with pytest.raises(ConfigError, match="attribute_head"):
        tiny_cfg(attribute_head="mean")
