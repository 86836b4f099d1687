"""Epsilon-R, the multi-label baselines and the ranking losses (as specified in their module docstrings)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unseen.multilabel.baselines import BiAM, BiAMConfig, GlobalLinear, GlobalLinearConfig
from unseen.multilabel.epsilon import Epsilon, EpsilonConfig
from unseen.multilabel.losses import biam_ranking_loss, orthogonality, sdl_loss, variance_l1


def _labels(rng: np.random.Generator, B: int, C: int) -> torch.Tensor:
    return torch.as_tensor(rng.choice([-1, 0, 1], size=(B, C), p=[0.6, 0.2, 0.2]), dtype=torch.int8)


# --------------------------------------------------------------------------------------------- losses
def _biam_direct(s: np.ndarray, y: np.ndarray) -> float:
    total = 0.0
    for n in range(s.shape[0]):
        terms = []
        for p in np.flatnonzero(y[n] == 1):
            for q in np.flatnonzero(y[n] == -1):
                terms.append(max(0.0, 1.0 + s[n, q] - s[n, p]))
        violating = sum(t > 0 for t in terms)
        total += sum(terms) / (violating + 1e-8)
    return total / s.shape[0]


@pytest.mark.parametrize("seed", range(5))
def test_biam_loss_matches_direct_pairwise_sum(seed: int) -> None:
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(6, 15)) * 2
    y = _labels(rng, 6, 15).numpy()
    y[0] = 0  # an image without annotations contributes 0 but still counts in the mean
    got = biam_ranking_loss(torch.as_tensor(s), torch.as_tensor(y))
    assert float(got) == pytest.approx(_biam_direct(s, y), rel=1e-12)


def test_biam_loss_zero_when_ranked_with_margin_and_gradient_only_on_violations() -> None:
    y = torch.tensor([[1, -1, 0, -1]])
    s = torch.tensor([[3.0, 1.5, 10.0, 0.0]], requires_grad=True)
    assert float(biam_ranking_loss(s, y).detach()) == 0.0  # unknown label with a huge score is ignored
    s2 = torch.tensor([[1.0, 0.5, 10.0, -5.0]], requires_grad=True)
    loss = biam_ranking_loss(s2, y)
    assert float(loss.detach()) == pytest.approx(0.5)  # one violating pair: 1 + 0.5 - 1, normalised by 1
    loss.backward()
    assert s2.grad.tolist() == [[-1.0, 1.0, 0.0, 0.0]]


def _sdl_direct(s: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    total = 0.0
    for n in range(s.shape[0]):
        P = np.flatnonzero(y[n] == 1)
        if len(P) == 0:
            continue
        Nn = np.flatnonzero(y[n] != 1)
        div = 1.0 + w[P].var(0).sum()
        pair = sum(math.log1p(math.exp(s[n, q] - s[n, p])) for p in P for q in Nn) / len(P)
        total += div * pair
    return total / s.shape[0]


@pytest.mark.parametrize("seed", range(3))
def test_sdl_loss_matches_direct_computation(seed: int) -> None:
    rng = np.random.default_rng(seed)
    s, w = rng.normal(size=(5, 12)), rng.normal(size=(12, 7))
    y = _labels(rng, 5, 12).numpy()
    got = sdl_loss(torch.as_tensor(s), torch.as_tensor(y), torch.as_tensor(w))
    assert float(got) == pytest.approx(_sdl_direct(s, y, w), rel=1e-10)


def test_regularisers() -> None:
    rows = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[2.0, 2.0], [2.0, 2.0]]])
    # per-dimension population variance over rows: image 0 -> [0.25, 0.25], image 1 -> 0
    assert float(variance_l1(rows)) == pytest.approx(0.25)
    # image 0 orthogonal rows (0), image 1 identical rows (cos 1 -> off-diagonal mean 1)
    assert float(orthogonality(rows)) == pytest.approx(0.5)


# --------------------------------------------------------------------------------------------- Epsilon-R
@pytest.mark.parametrize("source", ["vgg", "vit"])
def test_epsilon_shapes_per_stage(source: str) -> None:
    torch.manual_seed(0)
    in_dim = 512 if source == "vgg" else 768
    B, N, C = 2, 196, 11
    cfg = EpsilonConfig(dim=64, heads=4)
    model = Epsilon(cfg, in_dim, N, 300).eval()
    x = torch.randn(B, N, in_dim)
    cls = torch.randn(B, in_dim) if source == "vit" else None
    w = torch.nn.functional.normalize(torch.randn(C, 300), dim=-1)
    gt, tokens, u = model.encode(x, cls)
    assert gt.shape == (B, 7, 64) and tokens.shape == (B, N, 64) and u.shape == (B, 64)
    P, A = model.group(gt, tokens)
    assert P.shape == (B, 7, 300) and A.shape == (B, 7, N)
    torch.testing.assert_close(A.sum(-1), torch.ones(B, 7))  # softmax over the patches
    Q = model.global_prompts(u)
    assert Q.shape == (B, 7, 300)
    out = model(x, w, cls)
    assert out["scores"].shape == out["local"].shape == out["global"].shape == (B, C)
    # score fusion with alpha = 0 at init: the plain average of the local and global max-scores
    torch.testing.assert_close(out["local"], (P @ w.T).amax(1))
    torch.testing.assert_close(out["scores"], 0.5 * out["local"] + 0.5 * out["global"])


def test_epsilon_switches() -> None:
    torch.manual_seed(0)
    x, w = torch.randn(2, 16, 8), torch.randn(5, 12)
    m = Epsilon(
        EpsilonConfig(dim=16, heads=2, group_softmax="groups", fusion="prompt", reg="orth"), 8, 16, 12
    ).eval()
    gt, tokens, _ = m.encode(x)
    _, A = m.group(gt, tokens)
    torch.testing.assert_close(A.sum(1), torch.ones(2, 16))  # normalised over the groups
    out = m(x, w)
    loss, logs = m.loss(out, torch.tensor([[1, -1, 0, -1, 1], [0, 0, 1, -1, -1]]), w)
    assert torch.isfinite(loss) and set(logs) >= {"rank", "reg"}
    with pytest.raises(ValueError, match="global_groups"):
        Epsilon(EpsilonConfig(fusion="prompt", global_groups=3), 8, 16, 12)
    with pytest.raises(ValueError, match="group_softmax"):
        Epsilon(EpsilonConfig(group_softmax="gumbel"), 8, 16, 12)
    with pytest.raises(ValueError, match="B x 16 x 8"):
        m(torch.randn(2, 15, 8), w)


def _models(in_dim: int = 32, N: int = 16, D: int = 12):
    torch.manual_seed(0)
    return [
        Epsilon(EpsilonConfig(dim=32, heads=4), in_dim, N, D),
        BiAM(BiAMConfig(dim=16, heads=4, top_k=3), in_dim, N, D),
        GlobalLinear(GlobalLinearConfig(), in_dim, D),
    ]


@pytest.mark.parametrize("i", range(3))
def test_label_scores_are_independent_of_the_other_labels(i: int) -> None:
    """The run scores ZSL as the unseen columns of the joint GZSL matrix: valid only if this holds."""
    model = _models()[i].eval()
    x, w = torch.randn(3, 16, 32), torch.randn(9, 12)
    with torch.no_grad():
        full = model(x, w)["scores"]
        part = model(x, w[5:])["scores"]
    torch.testing.assert_close(part, full[:, 5:])


def test_biam_image_score_is_mean_of_top_k_region_scores() -> None:
    model = _models()[1].eval()
    x, w = torch.randn(2, 16, 32), torch.randn(4, 12)
    with torch.no_grad():
        out = model(x, w)
    r = out["region_scores"].numpy()
    expect = np.sort(r, axis=1)[:, -3:].mean(1)
    np.testing.assert_allclose(out["scores"].numpy(), expect, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="square"):
        BiAM(BiAMConfig(), 32, 15, 12)


@pytest.mark.slow  # a learning test (trains each model)
@pytest.mark.parametrize("i", range(3))
def test_models_learn_a_separable_toy_task(i: int) -> None:
    """Labels = which of 6 prototype directions are planted among the tokens: the ranking loss must drop clearly
    within a few dozen steps (a fit on seen labels only; transfer is tested by the demo world)."""
    g = torch.Generator().manual_seed(1)
    protos = torch.randn(6, 32, generator=g)
    w = torch.nn.functional.normalize(torch.randn(6, 12, generator=g), dim=-1)
    present = torch.rand(64, 6, generator=g) < 0.35
    x = 0.3 * torch.randn(64, 16, 32, generator=g)
    for n in range(64):
        for c in present[n].nonzero().flatten().tolist():
            x[n, c % 16] += protos[c] * 2
    y = present.to(torch.int8) * 2 - 1
    model = _models()[i]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        out = model(x, w)
        loss, _ = model.loss(out, y, w)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])


# --------------------------------------------------------------------------------------------- ablation switches
def _eps(seed: int = 0, **kw) -> Epsilon:
    torch.manual_seed(seed)
    return Epsilon(EpsilonConfig(dim=16, heads=2, **kw), 8, 16, 12)


def _top_level(m: torch.nn.Module) -> list[str]:
    return list(dict.fromkeys(k.split(".")[0] for k in m.state_dict()))


def test_epsilon_default_builds_both_branches_in_the_documented_order() -> None:
    m = _eps()
    assert EpsilonConfig().branches == ["gpa", "gfp"] and EpsilonConfig().fusion_weight is None
    # the parameters a checkpoint of the model holds, in creation order (the ablation switches add none)
    assert _top_level(m) == [
        "pos",
        "group_tokens",
        "alpha",
        "stem",
        "cls_stem",
        "encoder",
        "enc_norm",
        "q",
        "k",
        "v",
        "o",
        "prompt_norm",
        "prompt_proj",
        "gfp",
    ]
    assert isinstance(m.alpha, torch.nn.Parameter) and m.alpha.requires_grad


def test_epsilon_one_branch_alone() -> None:
    full = _eps()
    x, w = torch.randn(2, 16, 8), torch.nn.functional.normalize(torch.randn(5, 12), dim=-1)
    y = torch.tensor([[1, -1, 0, -1, 1], [0, 0, 1, -1, -1]])
    gpa = _eps(branches=["gpa"]).eval()
    assert "gfp" not in _top_level(gpa) and "alpha" not in _top_level(gpa)
    # the modules built before the GFP get the default's initial weights
    for name in ("stem", "cls_stem", "encoder", "q", "k", "v", "o", "prompt_norm", "prompt_proj"):
        for (k, a), b in zip(
            getattr(full, name).state_dict().items(), getattr(gpa, name).state_dict().values()
        ):
            assert torch.equal(a, b), f"{name}.{k}"
    out = gpa(x, w)
    assert set(out) == {"scores", "local", "prompts", "attention"}
    torch.testing.assert_close(out["scores"], (out["prompts"] @ w.T).amax(1))
    loss, logs = gpa.loss(out, y, w)
    rank = biam_ranking_loss(out["scores"], y, 1.0)
    torch.testing.assert_close(loss, rank + 0.1 * variance_l1(out["prompts"]))
    assert "fusion_local" not in logs

    gfp = _eps(branches=["gfp"]).eval()
    assert not {"group_tokens", "q", "prompt_proj", "alpha"} & set(_top_level(gfp))
    gt, tokens, u = gfp.encode(x)
    assert gt.shape == (2, 0, 16) and tokens.shape == (2, 16, 16)
    torch.testing.assert_close(u, tokens.mean(1))  # the encoder ran over X alone: no group tokens
    out = gfp(x, w)
    assert set(out) == {"scores", "global", "global_prompts"}
    torch.testing.assert_close(out["scores"], (gfp.global_prompts(u) @ w.T).amax(1))
    loss, _ = gfp.loss(out, y, w)
    torch.testing.assert_close(
        loss, biam_ranking_loss(out["scores"], y, 1.0) + 0.1 * variance_l1(out["global_prompts"])
    )


def test_epsilon_fixed_fusion_weight() -> None:
    x, w = torch.randn(2, 16, 8), torch.nn.functional.normalize(torch.randn(5, 12), dim=-1)
    y = torch.tensor([[1, -1, 0, -1, 1], [0, 0, 1, -1, -1]])
    learned, fixed = _eps(), _eps(fusion_weight=0.25)
    # a buffer, not a parameter: saved with the model, never trained; the other weights are the default's
    assert "alpha" not in dict(fixed.named_parameters()) and "alpha" in fixed.state_dict()
    for k, v in learned.state_dict().items():
        if k != "alpha":
            assert torch.equal(v, fixed.state_dict()[k]), k
    out = fixed.eval()(x, w)
    torch.testing.assert_close(out["scores"], 0.25 * out["local"] + 0.75 * out["global"])
    fixed.train()
    opt = torch.optim.SGD(fixed.parameters(), lr=1.0)
    loss, logs = fixed.loss(fixed(x, w), y, w)
    loss.backward()
    opt.step()
    assert logs["fusion_local"] == pytest.approx(0.25) and float(fixed.local_weight()) == pytest.approx(0.25)
    # 0.5 = the learned weight at initialisation: the same scores before training
    half = _eps(fusion_weight=0.5).eval()
    torch.testing.assert_close(half(x, w)["scores"], learned.eval()(x, w)["scores"])


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"branches": []}, "branches"),
        ({"branches": ["gpa", "gpa"]}, "branches"),
        ({"branches": ["local"]}, "branches"),
        ({"fusion_weight": 1.5}, "fusion_weight"),
        ({"branches": ["gpa"], "fusion_weight": 0.5}, "both"),
        ({"branches": ["gfp"], "fusion": "prompt"}, "both"),
        ({"reg": "l2"}, "reg"),
    ],
)
def test_epsilon_switches_are_checked_at_config_load(kw, match) -> None:
    from unseen.config import ConfigError

    with pytest.raises(ConfigError, match=match):
        EpsilonConfig(**kw)
