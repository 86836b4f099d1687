"""Multi-label metrics: masked per-class AP (sklearn ties), mAP exclusions / biam_compat / image filter, P/R/F1@K."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unseen.multilabel.metrics import (
    average_precision,
    evaluate_multilabel,
    mean_average_precision,
    precision_recall_f1_at_k,
)

sklearn_metrics = pytest.importorskip("sklearn.metrics")


# ----------------------------------------------------------------------------------------------- helpers


def _random_case(rng, N, C, *, ties=False, p=(0.3, 0.4, 0.3), dtype=np.float32):
    if ties:
        s = rng.integers(0, 4, size=(N, C)).astype(dtype)
    else:
        s = rng.standard_normal((N, C)).astype(dtype)
    y = rng.choice(np.array([-1, 0, 1], dtype=np.int8), size=(N, C), p=list(p))
    return s, y


def _sklearn_ap(s, y):
    out = np.full(y.shape[1], np.nan)
    for c in range(y.shape[1]):
        m = y[:, c] != 0
        if (y[m, c] == 1).any():
            out[c] = sklearn_metrics.average_precision_score(y[m, c] == 1, s[m, c])
    return out


def _loop_prf(s, y, ks):
    """Direct per-image reference of section 7.3 (stable argsort: ties go to the lowest index)."""
    N = s.shape[0]
    n_true = int((y == 1).sum())
    out = {}
    for k in ks:
        tp = 0
        for n in range(N):
            top = np.argsort(-s[n].astype(np.float64), kind="stable")[:k]
            tp += int((y[n, top] == 1).sum())
        P = tp / (N * k) if N else math.nan
        R = tp / n_true if n_true else math.nan
        out[f"P@{k}"], out[f"R@{k}"] = P, R
        out[f"F1@{k}"] = 2 * P * R / (P + R) if (P + R) > 0 else 0.0
    return out


def _assert_dict_close(a, b, tol=1e-12):
    assert set(a) <= set(b)
    for key, v in a.items():
        w = b[key]
        if isinstance(v, float) and math.isnan(v):
            assert math.isnan(w), key
        else:
            assert w == pytest.approx(v, abs=tol), key


@pytest.fixture(params=["sort", "topk"])
def prf_path(request, monkeypatch):
    """Run a P/R/F1@K test through both top-K paths: numpy sort of short rows and torch.topk of long rows."""
    import unseen.multilabel.metrics as M

    monkeypatch.setattr(M, "_SORT_MAX_C", 1 << 30 if request.param == "sort" else 0)
    return request.param


# ----------------------------------------------------------------------------------------------- AP


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ap_matches_sklearn_masked(seed, ties):
    rng = np.random.default_rng(seed)
    s, y = _random_case(rng, 257, 23, ties=ties)
    y[:, 3] = np.where(y[:, 3] == 1, -1, y[:, 3])  # no positive
    y[:, 5] = 0  # nothing annotated
    y[:, 7] = np.where(y[:, 7] == -1, 1, y[:, 7])  # only positives: AP = 1
    ap = average_precision(s, y)
    ref = _sklearn_ap(s, y)
    assert ap.shape == (23,) and ap.dtype == np.float64
    np.testing.assert_allclose(ap, ref, rtol=0, atol=1e-12, equal_nan=True)
    assert np.isnan(ap[3]) and np.isnan(ap[5]) and ap[7] == 1.0


def test_ap_heavy_ties_small_random():
    rng = np.random.default_rng(7)
    for _ in range(40):
        N, C = int(rng.integers(1, 40)), int(rng.integers(1, 6))
        s, y = _random_case(rng, N, C, ties=True, p=(0.35, 0.3, 0.35), dtype=np.float64)
        np.testing.assert_allclose(
            average_precision(s, y, chunk_size=int(rng.integers(1, 4))),
            _sklearn_ap(s, y),
            rtol=0,
            atol=1e-12,
            equal_nan=True,
        )


def test_ap_hand_computed():
    # ranked: +, -, +, (unannotated ignored), -  ->  AP = (1/1 + 2/3) / 2
    s = np.array([[0.9], [0.8], [0.7], [0.75], [0.1]])
    y = np.array([[1], [-1], [1], [0], [-1]], dtype=np.int8)
    assert average_precision(s, y)[0] == pytest.approx((1 + 2 / 3) / 2)
    # the label-0 image would rank second if it counted as a negative: it must not
    y0 = y.copy()
    y0[3] = -1
    assert average_precision(s, y0)[0] == pytest.approx((1 + 2 / 4) / 2)
    # one tie group {+, -} on top, then +: both top entries share precision 1/2 -> (1/2 + 2/3) / 2
    s2 = np.array([[1.0], [1.0], [0.5]])
    y2 = np.array([[-1], [1], [1]], dtype=np.int8)
    assert average_precision(s2, y2)[0] == pytest.approx((1 / 2 + 2 / 3) / 2)
    # order inside the tie does not matter
    assert average_precision(s2[[1, 0, 2]], y2[[1, 0, 2]])[0] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_ap_integer_and_torch_inputs():
    rng = np.random.default_rng(3)
    s, y = _random_case(rng, 64, 9, ties=True)
    ref = average_precision(s, y)
    np.testing.assert_array_equal(average_precision(s.astype(np.int64), y.astype(np.int64)), ref)
    np.testing.assert_array_equal(average_precision(torch.from_numpy(s), torch.from_numpy(y)), ref)
    np.testing.assert_array_equal(average_precision(s, y.astype(np.float32)), ref)
    # bfloat16 scores are converted (values representable in bf16: small integers)
    np.testing.assert_array_equal(average_precision(torch.from_numpy(s).bfloat16(), torch.from_numpy(y)), ref)


# ----------------------------------------------------------------------------------------------- mAP


def test_map_exclusions_weighted_and_biam_compat():
    s = np.array([[0.9, 0.1, 0.3], [0.2, 0.8, 0.4], [0.6, 0.7, 0.5]])
    y = np.array([[1, -1, -1], [-1, 1, 0], [-1, 1, -1]], dtype=np.int8)
    # AP0 = 1, AP1 = 1 (two positives above the negative), class 2: no positive
    out = mean_average_precision(s, y)
    assert out["mAP"] == pytest.approx(1.0) and out["n_excluded"] == 1 and out["n_images"] == 3
    assert np.isnan(out["per_class"][2]) and list(out["n_positives"]) == [1, 2, 0]
    y[0, 1] = 1  # class 1: + + + with one - at 0.1 -> AP1 = 1; make class 0 imperfect instead
    y[2, 0] = 1  # class 0: scores 0.9(+) 0.6(+) 0.2(-) -> AP0 = 1
    s[1, 0] = 0.95  # now 0.95(-) 0.9(+) 0.6(+) -> AP0 = (1/2 + 2/3) / 2
    out = mean_average_precision(s, y)
    ap0 = (1 / 2 + 2 / 3) / 2
    assert out["per_class"][0] == pytest.approx(ap0) and out["per_class"][1] == pytest.approx(1.0)
    assert out["mAP"] == pytest.approx((ap0 + 1) / 2)
    assert mean_average_precision(s, y, biam_compat=True)["mAP"] == pytest.approx((ap0 + 1 + 0) / 3)
    assert mean_average_precision(s, y, biam_compat=True)["n_excluded"] == 1
    # weighted: class 0 has 2 positives, class 1 has 3
    assert mean_average_precision(s, y, weighted=True)["mAP"] == pytest.approx((2 * ap0 + 3 * 1) / 5)


def test_map_all_classes_excluded_is_nan():
    s = np.zeros((2, 2))
    y = np.array([[-1, 0], [0, -1]], dtype=np.int8)
    out = mean_average_precision(s, y)
    assert math.isnan(out["mAP"]) and out["n_excluded"] == 2
    assert mean_average_precision(s, y, biam_compat=True)["mAP"] == 0.0


def test_image_filter_has_positive():
    rng = np.random.default_rng(5)
    s, y = _random_case(rng, 120, 11, p=(0.3, 0.6, 0.1))
    y[::4] = np.where(y[::4] == 1, -1, y[::4])  # every 4th image: no positive
    keep = (y == 1).any(axis=1)
    assert 0 < keep.sum() < 120
    out = mean_average_precision(s, y, image_filter="has_positive")
    ref = mean_average_precision(s[keep], y[keep])
    assert out["n_images"] == int(keep.sum())
    np.testing.assert_array_equal(out["per_class"], ref["per_class"])
    assert out["mAP"] == ref["mAP"]
    # negatives on the dropped images changed the AP: the filter matters
    assert not np.allclose(mean_average_precision(s, y)["per_class"], out["per_class"], equal_nan=True)
    prf = precision_recall_f1_at_k(s, y, (1, 3), image_filter="has_positive")
    assert prf == precision_recall_f1_at_k(s[keep], y[keep], (1, 3))
    ev = evaluate_multilabel(s, y, ks=(1, 3), image_filter="has_positive")
    assert ev["n_images"] == int(keep.sum()) and ev["mAP"] == out["mAP"] and ev["P@3"] == prf["P@3"]
    with pytest.raises(ValueError, match="image_filter"):
        mean_average_precision(s, y, image_filter="positives")


# ----------------------------------------------------------------------------------------------- P/R/F1@K


def test_prf_hand_computed(prf_path):
    s = np.array([[0.9, 0.8, 0.1, 0.7], [0.1, 0.2, 0.3, 0.4]])
    y = np.array([[1, 0, 1, -1], [1, -1, 0, 1]], dtype=np.int8)
    # K=2: image 0 top {0, 1}: TP 1 (label 0 at col 1 is a FP); image 1 top {3, 2}: TP 1 -> TP 2
    out = precision_recall_f1_at_k(s, y, ks=(2,))
    assert out["P@2"] == pytest.approx(2 / 4) and out["R@2"] == pytest.approx(2 / 4)
    assert out["F1@2"] == pytest.approx(0.5)
    # K=1: TP = 1 (image 0 col 0) + 1 (image 1 col 3)
    out = precision_recall_f1_at_k(s, y, ks=1)
    assert out == pytest.approx({"P@1": 1.0, "R@1": 0.5, "F1@1": 2 / 3})


def test_prf_ties_broken_by_lowest_index(prf_path):
    s = np.array([[0.5, 0.5, 0.5, 0.5, 0.2]])
    y = np.array([[-1, 0, 1, 1, 1]], dtype=np.int8)
    out = precision_recall_f1_at_k(s, y, ks=(1, 2, 3, 4))
    # top-K = the first K columns: TPs 0, 0, 1, 2
    assert out["P@1"] == 0 and out["F1@1"] == 0.0 and out["P@2"] == 0.0
    assert out["P@3"] == pytest.approx(1 / 3) and out["R@3"] == pytest.approx(1 / 3)
    assert out["P@4"] == pytest.approx(2 / 4) and out["R@4"] == pytest.approx(2 / 3)
    # a strictly greater score outranks the tie; the remaining slot goes to the lowest tied index
    s2 = np.array([[0.5, 0.5, 0.5, 0.9]])
    y2 = np.array([[-1, 1, 1, 1]], dtype=np.int8)
    assert precision_recall_f1_at_k(s2, y2, ks=2)["P@2"] == pytest.approx(1 / 2)


def test_prf_k_larger_than_c_and_bad_k_rejected(prf_path):
    s, y = np.zeros((2, 3)), np.ones((2, 3), dtype=np.int8)
    assert precision_recall_f1_at_k(s, y, ks=3)["P@3"] == 1.0
    with pytest.raises(ValueError, match="larger than"):
        precision_recall_f1_at_k(s, y, ks=(1, 4))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="ks"):
            precision_recall_f1_at_k(s, y, ks=(bad,))


def test_prf_no_positive_and_empty():
    s = np.array([[0.1, 0.2]])
    y = np.array([[-1, 0]], dtype=np.int8)
    out = precision_recall_f1_at_k(s, y, ks=1)
    assert out["P@1"] == 0.0 and math.isnan(out["R@1"]) and out["F1@1"] == 0.0
    out = evaluate_multilabel(s, y, ks=1, image_filter="has_positive")
    assert out["n_images"] == 0 and math.isnan(out["P@1"]) and math.isnan(out["mAP"]) and out["F1@1"] == 0.0


@pytest.mark.parametrize("ties", [False, True])
def test_prf_matches_per_image_loop(ties, prf_path):
    rng = np.random.default_rng(11)
    s, y = _random_case(rng, 150, 17, ties=ties, p=(0.2, 0.6, 0.2))
    ks = (1, 3, 5, 17)
    _assert_dict_close(_loop_prf(s, y, ks), precision_recall_f1_at_k(s, y, ks=ks))
    _assert_dict_close(_loop_prf(s, y, ks), precision_recall_f1_at_k(s, y, ks=ks, chunk_size=7))


# ----------------------------------------------------------------------------------------------- evaluate, chunks


def test_evaluate_keys_and_consistency():
    rng = np.random.default_rng(2)
    s, y = _random_case(rng, 90, 12, ties=True)
    out = evaluate_multilabel(s, y, ks=(3, 5))
    assert set(out) == {"mAP", "n_excluded", "n_images", "P@3", "R@3", "F1@3", "P@5", "R@5", "F1@5"}
    m = mean_average_precision(s, y)
    assert out["mAP"] == m["mAP"] and out["n_excluded"] == m["n_excluded"] and out["n_images"] == 90
    p = precision_recall_f1_at_k(s, y, ks=(3, 5))
    assert all(out[k] == v for k, v in p.items())


@pytest.mark.parametrize("ties", [False, True])
def test_chunk_size_invariance(ties, prf_path):
    rng = np.random.default_rng(4)
    s, y = _random_case(rng, 211, 37, ties=ties, p=(0.1, 0.8, 0.1))
    y[:, 0] = 0
    ref = evaluate_multilabel(s, y, ks=(1, 5, 10), image_filter="has_positive")
    ref_ap = average_precision(s, y)
    for cs in (1, 2, 5, 16, 37, 1000):
        np.testing.assert_array_equal(average_precision(s, y, chunk_size=cs), ref_ap)
        out = evaluate_multilabel(
            s, y, ks=(1, 5, 10), image_filter="has_positive", chunk_size=cs, row_chunk_size=cs
        )
        assert out == ref or all(
            (isinstance(v, float) and math.isnan(v) and math.isnan(out[k])) or out[k] == v
            for k, v in ref.items()
        )


def test_inputs_not_modified():
    rng = np.random.default_rng(8)
    s, y = _random_case(rng, 40, 6, ties=True)
    s0, y0 = s.copy(), y.copy()
    evaluate_multilabel(s, y, ks=(1, 3), image_filter="has_positive")
    np.testing.assert_array_equal(s, s0)
    np.testing.assert_array_equal(y, y0)


# ----------------------------------------------------------------------------------------------- validation


def test_bad_inputs():
    s = np.zeros((3, 4))
    y = np.zeros((3, 4), dtype=np.int8)
    with pytest.raises(ValueError, match="same shape"):
        average_precision(s, y[:, :3])
    with pytest.raises(ValueError, match="N x C"):
        average_precision(s[0], y[0])
    bad = y.copy()
    bad[1, 2] = 2
    with pytest.raises(ValueError, match=r"labels must only contain -1, 0 or \+1.*row 1, column 2"):
        mean_average_precision(s, bad)
    with pytest.raises(ValueError, match="labels must only contain"):
        precision_recall_f1_at_k(s, np.full((3, 4), 0.5), ks=1)
    for v in (np.nan, np.inf, -np.inf):
        sb = s.copy()
        sb[2, 3] = v
        with pytest.raises(ValueError, match="scores must be finite.*row 2, column 3"):
            evaluate_multilabel(sb, y, ks=1)
    with pytest.raises(ValueError, match="scores"):
        average_precision(np.zeros((3, 4), dtype=bool), y)
    with pytest.raises(ValueError, match="chunk_size"):
        average_precision(s, y, chunk_size=0)


# ----------------------------------------------------------------------------------------------- fast paths


def _sparse_case(rng, N, C, *, per_row=4, tie_frac=0.5):
    """OI-like: a few annotated labels per image, many columns, ~10 % images without a positive; the scores of
    ``tie_frac`` of the rows are rounded to a coarse grid (ties at the K-th place and inside AP rankings)."""
    s = rng.standard_normal((N, C)).astype(np.float32)
    tied = rng.random(N) < tie_frac
    s[tied] = np.round(s[tied] * 4) / 4
    y = np.zeros((N, C), dtype=np.int8)
    for n in range(N):
        cols = rng.choice(C, size=per_row, replace=False)
        y[n, cols] = rng.choice(np.array([-1, 1], dtype=np.int8), size=per_row)
        if rng.random() < 0.1:
            y[n][y[n] == 1] = -1
    return s, y


@pytest.mark.parametrize("seed", [0, 1])
def test_sparse_labels_match_oracles_with_filter(seed, prf_path, monkeypatch):
    import unseen.multilabel.metrics as M

    monkeypatch.setattr(M, "_DENSE_FRACTION", 1.0)  # 6.7 % annotated: through the sparse AP path
    rng = np.random.default_rng(seed)
    s, y = _sparse_case(rng, 300, 60)
    keep = (y == 1).any(axis=1)
    ks = (1, 5, 10, 59, 60)
    out = evaluate_multilabel(s, y, ks=ks, image_filter="has_positive", row_chunk_size=17)
    ap = _sklearn_ap(s[keep], y[keep])
    m = mean_average_precision(s, y, image_filter="has_positive")
    np.testing.assert_allclose(m["per_class"], ap, rtol=0, atol=1e-12, equal_nan=True)
    assert out["mAP"] == pytest.approx(np.nanmean(ap), abs=1e-12)
    assert out["n_excluded"] == int(np.isnan(ap).sum()) and out["n_images"] == int(keep.sum())
    _assert_dict_close(_loop_prf(s[keep], y[keep], ks), out)


def test_prf_kth_place_ties_exhaustive(prf_path):
    """Every K with ties at, above and below the K-th place, K = C - 1 and K = C, against the stable loop."""
    rng = np.random.default_rng(21)
    for _ in range(30):
        N, C = int(rng.integers(1, 30)), int(rng.integers(2, 12))
        s = rng.integers(0, 3, size=(N, C)).astype(np.float32)
        y = rng.choice(np.array([-1, 0, 1], dtype=np.int8), size=(N, C))
        ks = tuple(range(1, C + 1))
        _assert_dict_close(
            _loop_prf(s, y, ks), precision_recall_f1_at_k(s, y, ks=ks, chunk_size=int(rng.integers(1, 8)))
        )


def test_signed_zero_is_one_tie(prf_path):
    s = np.array([[0.0, -0.0, 0.0, -0.0, -1.0]], dtype=np.float32).repeat(3, axis=0)
    y = np.array([[-1, 1, 1, -1, 1], [1, -1, -1, 1, -1], [-1, -1, 1, 1, 1]], dtype=np.int8)
    _assert_dict_close(_loop_prf(s, y, (1, 2, 3)), precision_recall_f1_at_k(s, y, ks=(1, 2, 3)))
    np.testing.assert_allclose(average_precision(s, y), _sklearn_ap(s, y), rtol=0, atol=1e-12)


def test_ap_column_chunks_by_entry_budget(monkeypatch):
    """Sparse labels over the entry budget are split into column chunks; the numbers are identical."""
    import unseen.multilabel.metrics as M

    rng = np.random.default_rng(9)
    s, y = _random_case(rng, 600, 13, ties=True, p=(0.05, 0.9, 0.05))  # 10 % annotated: ref = dense path
    y[:, 4] = 0
    ref = average_precision(s, y)
    ref_f = mean_average_precision(s, y, image_filter="has_positive")
    seen_chunks = []
    orig = M._ap_column_chunks
    monkeypatch.setattr(M, "_DENSE_FRACTION", 1.0)  # the sparse AP path
    monkeypatch.setattr(M, "_AP_ENTRIES", 150)
    monkeypatch.setattr(M, "_ap_column_chunks", lambda *a: seen_chunks.append(orig(*a)) or seen_chunks[-1])
    np.testing.assert_array_equal(average_precision(s, y), ref)
    out = mean_average_precision(s, y, image_filter="has_positive")
    np.testing.assert_array_equal(out["per_class"], ref_f["per_class"])
    chunks = seen_chunks[0]
    assert len(chunks) > 3 and chunks[0][0] == 0 and chunks[-1][1] == 13
    assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))
    np.testing.assert_allclose(ref, _sklearn_ap(s, y), rtol=0, atol=1e-12, equal_nan=True)


def test_input_layouts_and_dtypes():
    """Strided views, negative strides, read-only and big-endian arrays, float16/bfloat16/float64 tensors."""
    rng = np.random.default_rng(13)
    s, y = _random_case(rng, 80, 30, ties=True)
    ref = evaluate_multilabel(s[:, 10:], y[:, 10:], ks=(1, 4), image_filter="has_positive")
    sv, yv = s[:, 10:], y[:, 10:]  # views into wider matrices, as for ZSL columns
    assert not sv.flags.c_contiguous
    assert evaluate_multilabel(sv, yv, ks=(1, 4), image_filter="has_positive") == ref
    ro_s, ro_y = np.ascontiguousarray(sv), np.ascontiguousarray(yv)
    ro_s.flags.writeable = False
    ro_y.flags.writeable = False
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert evaluate_multilabel(ro_s, ro_y, ks=(1, 4), image_filter="has_positive") == ref
    assert evaluate_multilabel(sv.astype(">f4"), yv, ks=(1, 4), image_filter="has_positive") == ref
    rev = evaluate_multilabel(sv[::-1, ::-1], yv[::-1, ::-1], ks=(1, 4), image_filter="has_positive")
    assert rev["mAP"] == pytest.approx(ref["mAP"], abs=1e-12)  # AP does not depend on the order
    t = torch.from_numpy(np.ascontiguousarray(sv))
    for dt in (torch.float16, torch.bfloat16, torch.float64):  # small integers: exact in every dtype
        assert (
            evaluate_multilabel(
                t.to(dt), torch.from_numpy(yv.copy()).long(), ks=(1, 4), image_filter="has_positive"
            )
            == ref
        )


def test_integer_labels_out_of_range_rejected():
    s = np.zeros((4, 3), dtype=np.float32)
    for dt, v in ((np.int64, 2), (np.int16, -2), (np.uint8, 255)):
        y = np.zeros((4, 3), dtype=dt)
        y[3, 1] = v
        with pytest.raises(ValueError, match=r"labels must only contain.*row 3, column 1"):
            evaluate_multilabel(s, y, ks=1)


@pytest.mark.parametrize("seed", [0, 1])
def test_dense_and_sparse_ap_paths_identical(seed, monkeypatch):
    """The column-sort path (dense labels) and the annotated-entries path give the same numbers, bit for bit."""
    import unseen.multilabel.metrics as M

    rng = np.random.default_rng(seed)
    s, y = _random_case(rng, 230, 19, ties=True, p=(0.25, 0.5, 0.25))
    s[:, 3] = -s[:, 3]  # signed zeros
    y[::5] = np.where(y[::5] == 1, 0, y[::5])  # images without a positive, for the filter
    y[:, 6] = 0
    out = {}
    for frac in (0.0, 2.0):  # every matrix dense / every matrix sparse
        monkeypatch.setattr(M, "_DENSE_FRACTION", frac)
        out[frac] = [average_precision(s, y, chunk_size=cs) for cs in (None, 1, 7)]
        out[frac] += [
            mean_average_precision(s, y, image_filter="has_positive", chunk_size=cs)["per_class"]
            for cs in (None, 4)
        ]
    for res in out.values():  # chunk sizes do not matter
        np.testing.assert_array_equal(res[0], res[1])
        np.testing.assert_array_equal(res[0], res[2])
        np.testing.assert_array_equal(res[3], res[4])
    for a, b in zip(out[0.0], out[2.0]):
        np.testing.assert_array_equal(a, b)
    keep = (y == 1).any(axis=1)
    np.testing.assert_allclose(out[0.0][0], _sklearn_ap(s, y), rtol=0, atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(out[0.0][3], _sklearn_ap(s[keep], y[keep]), rtol=0, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize(
    "ap_entries", [1 << 22, 40]
)  # annotated entries kept / dropped mid-way (dense count)
def test_bad_labels_found_in_every_block(ap_entries, monkeypatch):
    import unseen.multilabel.metrics as M

    monkeypatch.setattr(M, "_AP_ENTRIES", ap_entries)
    monkeypatch.setattr(M, "_BLOCK_ENTRIES", 64)  # 8 rows per block
    rng = np.random.default_rng(17)
    s, y = _random_case(rng, 50, 8, p=(0.2, 0.6, 0.2))
    for bad in (2, -2, -128, 127):
        yb = y.copy()
        yb[45, 6] = bad
        with pytest.raises(ValueError, match=rf"labels must only contain.*found {bad}.*row 45, column 6"):
            evaluate_multilabel(s, yb, ks=1)
    ref = evaluate_multilabel(s, y, ks=(1, 3), image_filter="has_positive")
    monkeypatch.setattr(M, "_AP_ENTRIES", 1 << 22)
    monkeypatch.setattr(M, "_BLOCK_ENTRIES", 1 << 23)
    assert evaluate_multilabel(s, y, ks=(1, 3), image_filter="has_positive") == ref


# ----------------------------------------------------------------------------------------------- dense AP path


def _loop_ap(s, y):
    """Straightforward per-class AP with sklearn's tie rule, written to do the library's float arithmetic: walk
    the annotated images by score descending, one tie group at a time; each positive of a group adds
    ``TP / seen`` at the group's end (Python int / int division, IEEE-rounded), summed one positive at a time
    in rank order, then divided by the positive count. The same arithmetic means the same bits."""
    out = np.full(y.shape[1], np.nan)
    for c in range(y.shape[1]):
        m = y[:, c] != 0
        v = [
            float(x) for x in np.asarray(s[m, c], dtype=np.float64)
        ]  # widening is exact: same order and ties
        p = [bool(x) for x in y[m, c] == 1]
        if not any(p):
            continue
        order = sorted(range(len(v)), key=lambda i: -v[i])
        total, tp, i = 0.0, 0, 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            hits = sum(p[order[k]] for k in range(i, j + 1))
            tp += hits
            for _ in range(hits):
                total += tp / (j + 1)
            i = j + 1
        out[c] = total / sum(p)
    return out


def _dense_case(rng, N, C, *, zero_frac=0.1):
    """Dense labels (mostly +-1, ``zero_frac`` unannotated) with heavy ties, signed zeros and the corner columns:
    0 no positive, 1 nothing annotated, 2 constant scores, 3 only positives, 4 a single positive."""
    s = rng.integers(-3, 4, size=(N, C)).astype(np.float64) / 2
    s[:, 5:] += np.where(rng.random((N, C - 5)) < 0.3, rng.standard_normal((N, C - 5)), 0.0)  # some untied
    s = np.where(rng.random((N, C)) < 0.5, -s, s)  # -0.0 and 0.0 must form one tie
    y = rng.choice(np.array([-1, 1], dtype=np.int8), size=(N, C), p=[0.7, 0.3])
    y[rng.random((N, C)) < zero_frac] = 0
    y[:, 0] = np.where(y[:, 0] == 1, -1, y[:, 0])
    y[:, 1] = 0
    s[:, 2] = 0.5
    y[:, 4] = np.where(y[:, 4] == 1, -1, y[:, 4])
    y[N // 2, 4] = 1
    y[-5:] = np.where(y[-5:] == 1, -1, y[-5:])  # images without a positive (dropped by the filter)
    y[:, 3] = np.where(y[:, 3] == -1, 1, y[:, 3])
    y[-5:, 3] = 0
    return s, y


@pytest.fixture
def dense_path(monkeypatch):
    """Every matrix through the dense (column-sort) AP path, transposed a few source rows at a time."""
    import unseen.multilabel.metrics as M

    monkeypatch.setattr(M, "_DENSE_FRACTION", 0.0)
    monkeypatch.setattr(M, "_T_ROWS", 7)
    calls = []
    orig = M._ap_dense
    monkeypatch.setattr(M, "_ap_dense", lambda *a: calls.append(a[0].shape) or orig(*a))
    return calls


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "int64", "bfloat16"])
@pytest.mark.parametrize("zero_frac", [0.0, 0.15])
def test_dense_ap_equals_loop_oracle_and_sklearn(dtype, zero_frac, dense_path):
    rng = np.random.default_rng(31)
    s, y = _dense_case(rng, 61, 11, zero_frac=zero_frac)
    if dtype == "int64":
        s = np.round(s * 2).astype(np.int64)
    elif dtype == "bfloat16":
        s = torch.from_numpy(s).bfloat16()  # half-integers: exact in every float dtype
    else:
        s = s.astype(dtype)
    s_np = s.float().numpy() if isinstance(s, torch.Tensor) else s
    keep = (y == 1).any(axis=1)
    assert 0 < keep.sum() < 61
    for cs in (None, 1, 4):
        ap = average_precision(s, y, chunk_size=cs)
        np.testing.assert_array_equal(ap, _loop_ap(s_np, y))  # bit for bit
        np.testing.assert_allclose(ap, _sklearn_ap(s_np, y), rtol=0, atol=1e-12, equal_nan=True)
        out = mean_average_precision(s, y, image_filter="has_positive", chunk_size=cs)
        np.testing.assert_array_equal(out["per_class"], _loop_ap(s_np[keep], y[keep]))
        np.testing.assert_array_equal(out["n_positives"], (y == 1).sum(axis=0))
    assert dense_path and all(shape[1] in (61, keep.sum()) for shape in dense_path)
    ap = average_precision(s, y)
    assert np.isnan(ap[0]) and np.isnan(ap[1]) and ap[3] == 1.0
    # constant column: one tie group, AP = the positive rate among the annotated images
    m2 = y[:, 2] != 0
    assert ap[2] == pytest.approx((y[m2, 2] == 1).mean(), abs=1e-15)


def test_dense_ap_strided_readonly_bigendian_inputs(dense_path):
    """Views (ZSL columns, reversed rows), read-only and big-endian scores give the contiguous result; the input
    is never written to (the sort works on a copy)."""
    rng = np.random.default_rng(32)
    s, y = _dense_case(rng, 40, 14, zero_frac=0.05)
    s = s.astype(np.float32)
    s0 = s.copy()
    ref = _loop_ap(s[:, 3:], y[:, 3:])
    np.testing.assert_array_equal(average_precision(s[:, 3:], y[:, 3:]), ref)
    np.testing.assert_array_equal(average_precision(s[::-1, 3:], y[::-1, 3:]), ref)
    ro = s[:, 3:].astype(">f4")
    ro.flags.writeable = False
    np.testing.assert_array_equal(average_precision(ro, y[:, 3:]), ref)
    np.testing.assert_array_equal(s, s0)


@pytest.mark.parametrize("seed", [0, 1])
def test_dense_and_sparse_paths_identical_without_zeros(seed, monkeypatch):
    """Fully annotated labels (NUS-WIDE: no -inf masking) through both AP paths: the same bits."""
    import unseen.multilabel.metrics as M

    rng = np.random.default_rng(seed)
    s, y = _dense_case(rng, 97, 9, zero_frac=0.0)
    y[:, 1] = -1
    s = s.astype(np.float32)
    res = {}
    # dense with the positives listed once / dense with transposed label blocks (more positives than the AP
    # budget) / sparse
    for frac, budget in ((0.0, 1 << 22), (0.0, 50), (2.0, 1 << 22)):
        monkeypatch.setattr(M, "_DENSE_FRACTION", frac)
        monkeypatch.setattr(M, "_AP_ENTRIES", budget)
        res[frac, budget] = (
            average_precision(s, y),
            mean_average_precision(s, y, image_filter="has_positive")["per_class"],
        )
    for other in ((0.0, 50), (2.0, 1 << 22)):
        for a, b in zip(res[0.0, 1 << 22], res[other]):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(res[0.0, 1 << 22][0], _loop_ap(s, y))


def test_flat_nonzero_limit():
    """The annotated-entry scan gives up (None) exactly when there are more non-zeros than the limit."""
    import unseen.multilabel.metrics as M

    rng = np.random.default_rng(33)
    for _ in range(50):
        a = np.where(rng.random((int(rng.integers(1, 30)), 13)) < rng.random(), 1, 0).astype(np.int8)
        a[a == 1] = rng.choice(np.array([-1, 1], dtype=np.int8), size=int((a == 1).sum()))
        nnz = int(np.count_nonzero(a))
        limit = int(rng.integers(0, a.size + 2))
        f = M._flat_nonzero(a, limit)
        if nnz > limit:
            assert f is None
        else:
            np.testing.assert_array_equal(f, np.flatnonzero(a))
        np.testing.assert_array_equal(M._flat_nonzero(a), np.flatnonzero(a))


@pytest.mark.parametrize("dense_fraction", [0.03, 1.0])
def test_annotated_entries_listed_only_when_sparse_and_few(dense_fraction, monkeypatch):
    """The validation pass lists the annotated entries only while they fit the AP budget and every block is
    sparse; otherwise it counts them. Either way the counts and the AP numbers are the same."""
    import unseen.multilabel.metrics as M

    monkeypatch.setattr(M, "_DENSE_FRACTION", dense_fraction)
    monkeypatch.setattr(M, "_BLOCK_ENTRIES", 200)  # 20 rows per validation block
    rng = np.random.default_rng(34)
    s, y = _dense_case(rng, 120, 10, zero_frac=0.1)
    ys = np.zeros_like(y)  # 1 % annotated: two entries per block
    r, c = np.arange(0, 120, 10), rng.integers(2, 10, size=12)
    ys[r, c] = np.where(y[r, c] == 1, 1, -1)
    cases = [
        (lab, mean_average_precision(s, lab, image_filter="has_positive")["per_class"]) for lab in (y, ys)
    ]
    assert np.count_nonzero(ys) == 12 and np.isfinite(cases[1][1]).any()
    for budget in (1 << 22, 100):  # all entries fit / the dense labels go over the budget mid-way
        monkeypatch.setattr(M, "_AP_ENTRIES", budget)
        for lab, ref in cases:
            d = M._prepare(s, lab)
            assert d.n_annotated == int(np.count_nonzero(lab)) and d.n_true == int((lab == 1).sum())
            np.testing.assert_array_equal(d.has_pos, (lab == 1).any(axis=1))
            listed = d.n_annotated <= budget and (lab is ys or dense_fraction == 1.0)
            assert (d.entries is not None) == listed
            if d.entries is not None:
                np.testing.assert_array_equal(d.entries[0], np.flatnonzero(lab))
                np.testing.assert_array_equal(d.entries[1], lab.reshape(-1)[np.flatnonzero(lab)])
            out = mean_average_precision(s, lab, image_filter="has_positive")
            np.testing.assert_array_equal(out["per_class"], ref)


@pytest.mark.slow
def test_dense_ap_nus_scale_bits():
    """NUS-WIDE-sized columns (107,859 images, some bf16-rounded scores: ties), several column blocks: the dense
    path equals the sparse path bit for bit and sklearn to 1e-12."""
    import unseen.multilabel.metrics as M

    rng = np.random.default_rng(35)
    N, C = 107_859, 80
    y = np.where(rng.random((N, C)) < rng.uniform(0.002, 0.05, C), 1, -1).astype(np.int8)
    s = rng.standard_normal((N, C), dtype=np.float32) + (y == 1)
    tied = rng.random(N) < 0.2
    s[tied] = torch.from_numpy(s[tied]).bfloat16().float().numpy()
    y[rng.random((N, C)) < 0.01] = 0
    dense = mean_average_precision(s, y)["per_class"]
    old = M._DENSE_FRACTION
    try:
        M._DENSE_FRACTION = 2.0
        sparse = mean_average_precision(s, y, chunk_size=7)["per_class"]
    finally:
        M._DENSE_FRACTION = old
    np.testing.assert_array_equal(dense, sparse)
    cols = [0, 41, 79]
    np.testing.assert_allclose(dense[cols], _sklearn_ap(s[:, cols], y[:, cols]), rtol=0, atol=1e-12)
