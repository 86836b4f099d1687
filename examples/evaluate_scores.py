"""Run each setting's evaluator on a score matrix of your own (no model, no dataset).

The scores here are random with a weak signal towards the true class; replace them with your model's outputs.
Every evaluator takes numpy arrays or torch tensors and returns fractions in [0, 1] (papers print them x100).

    python examples/evaluate_scores.py
"""

from __future__ import annotations

import numpy as np

from unseen.attribute.metrics import evaluate_attribute, select_gamma
from unseen.compositional.metrics import StreamingEvaluator, open_world_keep_mask
from unseen.multilabel.metrics import evaluate_multilabel

rng = np.random.default_rng(0)


def attribute() -> None:
    """GZSL: one class per image, columns = every class in global order; seen classes 0-6, unseen 7-9."""
    n_classes, seen, unseen = 10, np.arange(7), np.arange(7, 10)
    labels = rng.integers(0, n_classes, size=400)
    scores = rng.normal(size=(400, n_classes)) + 2.0 * np.eye(n_classes)[labels]
    scores[:, seen] += 1.0  # models trained on seen classes favour them: calibration removes that bias
    # gamma (subtracted from the seen scores) is chosen on validation scores, then applied to the test once
    val, test = slice(0, 200), slice(200, 400)
    gamma, _ = select_gamma(scores[val], labels[val], seen, unseen)
    m = evaluate_attribute(scores[test], labels[test], seen, unseen, gamma)
    print(
        f"attribute: CZSL top-1 {m['czsl_top1']:.3f} | GZSL S {m['S']:.3f} U {m['U']:.3f} H {m['H']:.3f} "
        f"(gamma {m['gamma']:.2f} from validation; H at gamma 0: {m['H_gamma0']:.3f})"
    )


def multilabel() -> None:
    """Labels per image in {+1, -1, 0 = not annotated}; columns [15 seen | 5 unseen]."""
    n_seen = 15
    labels = rng.choice(np.array([1, -1, 0], dtype=np.int8), p=[0.15, 0.75, 0.10], size=(300, 20))
    scores = rng.normal(size=labels.shape) + 1.5 * (labels == 1)
    zsl = evaluate_multilabel(scores[:, n_seen:], labels[:, n_seen:], ks=(3, 5))  # the unseen labels only
    gzsl = evaluate_multilabel(scores, labels, ks=(3, 5))  # seen and unseen labels ranked together
    for name, m in (("ZSL", zsl), ("GZSL", gzsl)):
        print(
            f"multilabel {name}: mAP {m['mAP']:.3f} | F1@3 {m['F1@3']:.3f} F1@5 {m['F1@5']:.3f} "
            f"({m['n_images']} images, {m['n_excluded']} labels without a positive left out of the mAP)"
        )


def compositional() -> None:
    """(state, object) pairs: 4 states x 5 objects; 8 train pairs, 4 unseen test pairs."""
    pairs = np.array([(s, o) for s in range(4) for o in range(5)])  # every combination = the open world
    order = rng.permutation(len(pairs))
    seen_mask = np.zeros(len(pairs), bool)
    seen_mask[order[:8]] = True
    closed_mask = seen_mask.copy()
    closed_mask[order[8:12]] = True  # closed world: train pairs + the test pairs
    gt_pair = rng.choice(np.flatnonzero(closed_mask), size=500)
    scores = rng.normal(size=(500, len(pairs))).astype(np.float32)
    scores[np.arange(500), gt_pair] += 2.0
    scores[:, seen_mask] += 0.5  # a seen bias; the evaluator sweeps a bias on the unseen pairs

    # the evaluator takes the scores block by block, so the matrix never needs to be in memory at once
    ev = StreamingEvaluator(pairs, seen_mask, closed_mask, gt_pair)
    for r in range(0, 500, 128):
        for c in range(0, len(pairs), 8):
            ev.update(scores[r : r + 128, c : c + 8], slice(r, r + 128), slice(c, c + 8))
    cw = ev.result()

    # open world: every pair is a candidate, minus unseen pairs whose feasibility is below a threshold (choose it
    # on validation, e.g. with unseen.compositional.metrics.ThresholdSearch; fixed here)
    feasibility = rng.random(len(pairs))
    ow_mask = open_world_keep_mask(seen_mask, feasibility, threshold=0.3)
    ow = StreamingEvaluator(pairs, seen_mask, ow_mask, gt_pair)
    ow.update(scores)
    ow_result = ow.result()
    print(
        f"compositional closed world: AUC {cw.auc:.3f} best HM {cw.best_hm:.3f} (S {cw.hm_seen:.3f}, "
        f"U {cw.hm_unseen:.3f}) state {cw.attr_acc:.3f} object {cw.obj_acc:.3f}"
    )
    print(
        f"compositional open world ({int(ow_mask.sum())} of {len(pairs)} pairs kept): AUC {ow_result.auc:.3f} "
        f"best HM {ow_result.best_hm:.3f}"
    )


if __name__ == "__main__":
    attribute()
    multilabel()
    compositional()
