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
