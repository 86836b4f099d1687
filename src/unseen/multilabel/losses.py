"""Ranking losses of multi-label ZSL (BiAM, SDL) and the prompt regularisers of Epsilon-R (SDL-style).

Labels are int tensors in {+1, -1, 0}; 0 = not annotated, ignored by every loss here except SDL, which treats it as
negative on purpose (its paper's convention).
"""

from __future__ import annotations

import torch


def _check(scores: torch.Tensor, labels: torch.Tensor) -> None:
    if scores.shape != labels.shape or scores.dim() != 2:
        raise ValueError(f"scores {tuple(scores.shape)} and labels {tuple(labels.shape)} must both be B x C")


def biam_ranking_loss(scores: torch.Tensor, labels: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """BiAM's pairwise hinge (its ``ranking_lossT``), computed per image over positives x negatives.

    For image n: l_n = sum_{p in P_n, q in N_n} [margin + s_q - s_p]_+ / (#violating pairs + 1e-8), where P_n / N_n are
    the labels marked +1 / -1; images without a violating pair contribute 0. Returns the mean over the batch.
    Memory is O(max_n |P_n| * |N_n|), never B x C x C (the reference's tensor is GBs on Open Images).
    """
    _check(scores, labels)
    total = scores.new_zeros(())
    for s, y in zip(scores, labels):
        pos, neg = s[y == 1], s[y == -1]
        if pos.numel() == 0 or neg.numel() == 0:
            continue
        h = torch.relu(margin + neg[None, :] - pos[:, None])
        total = total + h.sum() / ((h > 0).sum().to(h.dtype) + 1e-8)
    return total / max(scores.shape[0], 1)


def sdl_loss(scores: torch.Tensor, labels: torch.Tensor, label_embeddings: torch.Tensor) -> torch.Tensor:
    """SDL's semantic-diversity ranking loss (Alibaba-MIIL/ZS_SDL), unknown (0) treated as negative; images
    without a positive are skipped.
    l_n = (1 + sum_dims Var_{p in P_n}(w_p)) * sum_{p, q} log(1 + exp(s_q - s_p)) / |P_n|
    (population variance: 0 for a single positive). ``label_embeddings``: C x D rows of the scored labels."""
    _check(scores, labels)
    losses = []
    for s, y in zip(scores, labels):
        p = y == 1
        if not bool(p.any()):
            continue
        pos, neg = s[p], s[~p]
        div = 1.0 + label_embeddings[p].var(0, unbiased=False).sum()
        pair = torch.nn.functional.softplus(neg[None, :] - pos[:, None]).sum() / pos.numel()
        losses.append(div * pair)
    if not losses:
        return scores.sum() * 0.0
    return torch.stack(losses).sum() / scores.shape[0]


def variance_l1(rows: torch.Tensor) -> torch.Tensor:
    """SDL-style spread regulariser of B x G x D prompt rows: mean over the batch of ||Var_g(rows)||_1."""
    return rows.var(1, unbiased=False).sum(-1).mean()


def orthogonality(rows: torch.Tensor) -> torch.Tensor:
    """Mean squared off-diagonal cosine between the G rows of each B x G x D prompt set (0 = mutually orthogonal)."""
    r = torch.nn.functional.normalize(rows, dim=-1)
    g = r @ r.transpose(1, 2)
    G = rows.shape[1]
    off = g - torch.diag_embed(torch.diagonal(g, dim1=1, dim2=2))
    return (off**2).sum((1, 2)).mean() / max(G * (G - 1), 1)
