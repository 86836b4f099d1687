"""Compositional ZSL: the run protocol's compositional hooks (czsl folder -> frozen CLIP + method -> engine ->
streaming evaluator).

Training targets index ``train_pairs`` (file order); after every epoch the closed-world validation AUC (candidates
= train + val pairs) is computed and the best epoch kept; its checkpoint is tested once, closed world (candidates =
train + test pairs) and open world (all |A|*|O| pairs; the feasibility threshold is the first best of 50 chosen on
the **validation** set, infeasible unseen pairs excluded). Methods with ``fit="none"`` (zero-shot CLIP) train
nothing. Scores are streamed to the evaluator image batch by image batch: memory does not grow with the number of
pairs beyond the encoded candidate texts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from unseen.compositional.data import CZSLImageDataset, clip_transforms
from unseen.compositional.data import dataset_name as czsl_dataset_name
from unseen.compositional.datasets import CompositionalData, check_image_size
from unseen.compositional.metrics import CZSLResult, StreamingEvaluator, ThresholdSearch, open_world_keep_mask
from unseen.config import EvalConfig, RunConfig, load_run_config
from unseen.engine import LossFn, load_state_checked, progress
from unseen.io import atomic_write_json, read_image, short_hash
from unseen.registry import create_model, register_task
from unseen.task import DemoSpec, Fitted, Predictor, Task, Tested


class CompositionalModel:
    """What the compositional protocol calls on a model built on a frozen CLIP.

    Built as ``create_model(name, cfg, "compositional", clip_model=clip, attr_names=..., obj_names=...)``.
    ``encode_pairs(pairs K x 2, chunk)`` -> a text cache; ``encode_images(images, return_attention=False)`` ->
    image features (``.attention``: queries x patches for models that have them, else ``ValueError``);
    ``score(features, cache)`` -> dict with ``scores`` (B x K); ``model(images, pairs)`` -> training outputs;
    ``loss(out, attr, obj, pair)`` -> (loss, logs).
    """

    def encode_pairs(self, pairs: torch.Tensor, chunk: int = 0) -> Any:
        raise NotImplementedError

    def encode_images(self, images: torch.Tensor, return_attention: bool = False) -> Any:
        raise NotImplementedError

    def score(self, images: Any, cache: Any) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, images: torch.Tensor, pairs: torch.Tensor) -> dict[str, Any]:
        raise NotImplementedError

    def loss(self, out: dict[str, Any], attr: torch.Tensor, obj: torch.Tensor, pair: torch.Tensor) -> Any:
        raise NotImplementedError


def _pairs_tensor(attr: np.ndarray, obj: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.stack([attr, obj], 1), dtype=torch.long)


@torch.no_grad()
def stream_scores(
    model: nn.Module,
    loader: DataLoader,
    pairs: torch.Tensor,
    evaluators: list[tuple[Any, np.ndarray]],
    device: torch.device,
    text_chunk: int,
    desc: str = "scoring",
) -> None:
    """Score every image of ``loader`` against the candidate ``pairs`` (K x 2) and feed each evaluator its columns.

    ``evaluators``: (evaluator, columns) where ``columns[k]`` is the evaluator's column of candidate k (-1 = not one
    of its columns). Texts are encoded once (in chunks); images batch by batch: memory O(batch x K)."""
    model.eval()
    cache = model.encode_pairs(pairs.to(device), text_chunk)
    row = 0
    for images, *_ in progress(loader, desc=desc):
        feats = model.encode_images(images.to(device))
        s = model.score(feats, cache)["scores"].float().cpu().numpy()
        rows = slice(row, row + s.shape[0])
        for ev, cols in evaluators:
            keep = cols >= 0
            ev.update(s[:, keep], rows, cols[keep])
        row += s.shape[0]


def rescorer(
    model: nn.Module,
    loader: DataLoader,
    pairs: torch.Tensor,
    cols: np.ndarray,
    device: torch.device,
    text_chunk: int,
) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``rescore(rows)`` for :meth:`StreamingEvaluator.result`: the full rows of the samples the evaluator flagged
    (near-ties merged by the bias), recomputed with the streamed batch boundaries so that every value equals the
    streamed one (on a GPU a score can depend on its batch). Only the batches holding those rows are re-run."""
    dataset, bs = loader.dataset, int(loader.batch_size or 1)

    @torch.no_grad()
    def rescore(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cache = model.encode_pairs(pairs.to(device), text_chunk)
        out = np.empty((len(rows), len(cols)), np.float32)
        for b in np.unique(rows // bs):
            idx = range(int(b) * bs, min((int(b) + 1) * bs, len(dataset)))  # type: ignore[arg-type]
            images = torch.stack([dataset[i][0] for i in idx])
            s = model.score(model.encode_images(images.to(device)), cache)["scores"].float().cpu().numpy()
            here = np.flatnonzero(rows // bs == b)
            out[here] = s[rows[here] - int(b) * bs]
        return out, cols

    return rescore


def _result_dict(r: CZSLResult) -> dict[str, float]:
    return {
        "AUC": r.auc,
        "HM": r.best_hm,
        "S": r.best_seen,
        "U": r.best_unseen,
        "attr": r.attr_acc,
        "obj": r.obj_acc,
        "hm_seen": r.hm_seen,
        "hm_unseen": r.hm_unseen,
    }


CHANCE_BLOCK = 1 << 22  # random scores drawn and evaluated at a time (16 MiB of float32; C-GQA OW: 15 rows)


def chance_result(
    rng: np.random.Generator,
    pairs: np.ndarray,
    seen: np.ndarray,
    eval_mask: np.ndarray,
    gt: np.ndarray,
    gt_attr: np.ndarray,
    gt_obj: np.ndarray,
    block: int = CHANCE_BLOCK,
) -> CZSLResult:
    """The evaluator's result for i.i.d. uniform float32 scores (``len(gt) x len(pairs)``), drawn and streamed in
    blocks of whole rows of at most ``block`` values (one row if a row is longer): the same numbers as one
    ``rng.random((N, P), float32)`` matrix (a Generator fills row-major and consecutive draws continue its
    stream, so the blocks are that matrix's rows), with one block in memory instead of N x P (C-GQA open world:
    5.7 GB). Flagged near-ties are left unresolved (``n_ambiguous``), as with the dense matrix."""
    ev = StreamingEvaluator(pairs, seen, eval_mask, gt, gt_attr, gt_obj)
    n, p = len(gt), len(pairs)
    step = max(1, block // p)
    for a in range(0, n, step):
        b = min(n, a + step)
        ev.update(rng.random((b - a, p), dtype=np.float32), slice(a, b))
    return ev.result()


@register_task
class CompositionalTask(Task):
    """One compositional method on one czsl dataset (protocol: module docstring)."""

    setting: ClassVar[str] = "compositional"
    sections: ClassVar[dict[str, type]] = {"eval": EvalConfig}
    select_key: ClassVar[str] = "AUC"
    demo = DemoSpec(
        methods=("demo_refiner", "demo_csp", "demo_zeroshot"),
        title=(
            "embedded compositional benchmark (%): closed world (CW) and open world (OW); AUC, best HM, best seen "
            "S, best unseen U; state/object accuracy (CW, unbiased); epoch and OW threshold chosen on validation"
        ),
        columns=(
            ("method", "method"),
            ("cw/AUC", "CW AUC"),
            ("cw/HM", "HM"),
            ("cw/S", "S"),
            ("cw/U", "U"),
            ("cw/attr", "state"),
            ("cw/obj", "object"),
            ("ow/AUC", "OW AUC"),
            ("ow/HM", "HM "),
            ("ow/S", "S "),
            ("ow/U", "U "),
            ("time", "time"),
        ),
        footer=(
            "Refiner-R = our reconstruction of Refiner (no public code); the CLIP is a small hybrid ViT pretrained on "
            "clean renders of the world's training pairs only (the benchmark's images are cluttered), then frozen."
        ),
    )

    def setup(self, data: CompositionalData) -> None:
        self.spec = data
        self.data = data.czsl
        self.image_size = 0  # the CLIP's input resolution: set when it is built (or read from vocab.json)

    def dataset_name(self) -> str:
        d = self.data
        return d.dataset or d.root.name

    @classmethod
    def run_name_dataset(cls, cfg: RunConfig) -> str:
        """The dataset part of a default run folder name, from the config alone (the folder is named before the
        data is read): as :meth:`dataset_name` for a czsl folder, else the data name."""
        # a czsl folder's name tells the benchmark; the embedded world's cache folder does not
        root = cfg.data.root if cfg.data.name == "czsl" else ""
        if not root:
            return str(cfg.data.name)
        return czsl_dataset_name(root) or Path(os.path.abspath(root)).name or str(cfg.data.name)

    def build_model(self) -> nn.Module:
        from unseen.compositional.clip import create_clip

        torch.manual_seed(self.cfg.seed)
        m = self.cfg.model
        clip = create_clip(m.clip_arch, m.clip_weights or None, self.device)
        size = clip.visual.image_size  # open_clip's towers all record it (an int or an (h, w) pair)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        check_image_size(self.spec.image_size, self.image_size, m.clip_arch)
        model = create_model(
            m.name, m, "compositional", clip_model=clip, attr_names=self.data.attrs, obj_names=self.data.objs
        )
        return model.to(self.device)

    def loader(self, split: str) -> DataLoader:
        ds = CZSLImageDataset(self.data, split, clip_transforms(self.image_size, train=False))
        return DataLoader(ds, batch_size=self.cfg.eval.batch_size, num_workers=self.cfg.train.num_workers)

    def train_set(self) -> Dataset:
        return CZSLImageDataset(self.data, "train", clip_transforms(self.image_size, train=True))

    def loss_fn(self) -> LossFn:
        d = self.data
        train_pairs = _pairs_tensor(d.pair_attr[d.train_to_closed], d.pair_obj[d.train_to_closed]).to(
            self.device
        )

        def loss_fn(m: nn.Module, batch: Any, sub: Any) -> tuple[torch.Tensor, dict[str, float]]:
            images, attr, obj, pair = batch
            return m.loss(m(images, train_pairs), attr, obj, pair)

        return loss_fn

    def evaluate(self, model: nn.Module, epoch: int) -> dict[str, Any]:
        return _result_dict(self.closed_world(model, "val"))

    def selection_rule(self) -> str:
        return "epoch with the best closed-world validation AUC (candidates: train + val pairs)"

    # ---- evaluation
    def closed_world(self, model: nn.Module, split: str) -> CZSLResult:
        d = self.data
        ev = StreamingEvaluator(
            _pairs_tensor(d.pair_attr, d.pair_obj).numpy(),
            d.seen_mask(),
            d.eval_mask(split),
            d.targets(split),
            d.split_data(split).attr,
            d.split_data(split).obj,
        )
        cand = np.flatnonzero(d.eval_mask(split))
        loader, pairs = self.loader(split), _pairs_tensor(d.pair_attr[cand], d.pair_obj[cand])
        chunk = self.cfg.model.text_chunk
        stream_scores(model, loader, pairs, [(ev, cand)], self.device, chunk, f"{split} (closed world)")
        return ev.result(rescore=rescorer(model, loader, pairs, cand, self.device, chunk))

    def open_world(self, model: nn.Module) -> tuple[CZSLResult, dict[str, Any]]:
        """Threshold chosen on validation (one pass), then the test evaluation with the kept columns."""
        d, f = self.data, self.spec.feasibility
        ow_attr, ow_obj = np.divmod(np.arange(d.n_open_pairs), d.n_objs)
        ow_pairs = np.stack([ow_attr, ow_obj], 1)
        seen = d.seen_mask("open")
        all_pairs = _pairs_tensor(ow_attr, ow_obj)
        search = ThresholdSearch(ow_pairs, seen, f, d.targets("val", "open"), d.val.attr, d.val.obj)
        stream_scores(
            model,
            self.loader("val"),
            all_pairs,
            [(search, np.arange(d.n_open_pairs))],
            self.device,
            self.cfg.model.text_chunk,
            "val (open world)",
        )
        th = search.result()
        keep = open_world_keep_mask(seen, f, th.threshold)
        ev = StreamingEvaluator(ow_pairs, seen, keep, d.targets("test", "open"), d.test.attr, d.test.obj)
        cols = np.flatnonzero(keep)
        loader, pairs = self.loader("test"), _pairs_tensor(ow_attr[cols], ow_obj[cols])
        chunk = self.cfg.model.text_chunk
        stream_scores(model, loader, pairs, [(ev, cols)], self.device, chunk, "test (open world)")
        ow_result = ev.result(rescore=rescorer(model, loader, pairs, cols, self.device, chunk))
        info = {
            "threshold": th.threshold,
            "val_AUC": th.best_auc,
            "kept_unseen_pairs": int((keep & ~seen).sum()),
            "unseen_pairs": int((~seen).sum()),
            "rule": "first best validation AUC over 50 feasibility thresholds; "
            "infeasible unseen pairs excluded",
        }
        return ow_result, info

    def test(self, fitted: Fitted) -> Tested:
        d, model = self.data, fitted.model
        cw = self.closed_world(model, "test")
        metrics = {f"cw/{k}": v for k, v in _result_dict(cw).items()}
        ow_info = None
        if self.spec.feasibility is not None:
            ow, ow_info = self.open_world(model)
            metrics.update({f"ow/{k}": v for k, v in _result_dict(ow).items()})
        extra = {
            "data_root": str(d.root),
            "open_world": ow_info,
            "ambiguous_samples_cw": cw.n_ambiguous,  # near-ties left unresolved (0: resolved exactly)
            "resolved_samples_cw": cw.n_resolved,
            "counts": {
                "attrs": d.n_attrs,
                "objs": d.n_objs,
                "train_pairs": len(d.train_pairs),
                "cw_pairs": d.n_pairs,
                "ow_pairs": d.n_open_pairs,
                "images": {"train": len(d.train), "val": len(d.val), "test": len(d.test)},
            },
        }
        return Tested(metrics, extra=extra, detail=cw)

    def chance(self, tested: Tested) -> dict[str, float]:
        """Evaluator output for i.i.d. uniform scores (closed world test; open world with every pair kept, only
        where the run evaluates an open world)."""
        d = self.data
        rng = np.random.default_rng(self.cfg.seed)
        cw = chance_result(
            rng,
            _pairs_tensor(d.pair_attr, d.pair_obj).numpy(),
            d.seen_mask(),
            d.eval_mask("test"),
            d.targets("test"),
            d.test.attr,
            d.test.obj,
        )
        out = {f"cw/{k}": v for k, v in _result_dict(cw).items()}
        if self.spec.feasibility is not None:  # the same rule as test(): no ow/ metrics, no ow/ chance
            ow = chance_result(
                rng,  # continues after the closed-world draws, as when the two were drawn in one function
                np.stack(np.divmod(np.arange(d.n_open_pairs), d.n_objs), 1),
                d.seen_mask("open"),
                np.ones(d.n_open_pairs, bool),
                d.targets("test", "open"),
                d.test.attr,
                d.test.obj,
            )
            out.update({f"ow/{k}": v for k, v in _result_dict(ow).items()})
        return out

    def data_fingerprint(self, tested: Tested) -> str:
        return short_hash(self.data.summary() + json.dumps(self.data.pairs))

    def save_assets(self, fitted: Fitted) -> None:
        d = self.data
        atomic_write_json(
            self.run_dir / "vocab.json",
            {
                "attrs": d.attrs,
                "objs": d.objs,
                "pairs": [list(p) for p in d.pairs],
                "train_pairs": [list(p) for p in d.train_pairs],
                "image_size": self.image_size,
            },
        )

    def plots(self, fitted: Fitted, tested: Tested, results: dict[str, Any]) -> None:
        from unseen import report

        report.plot_seen_unseen_curve(
            tested.detail,
            self.run_dir / "plots" / "seen_unseen_curve.png",
            title=f"{results['method']} on {results['dataset']}: closed-world test",
        )
        self.plot_query_attention(fitted.model)

    @torch.no_grad()
    def plot_query_attention(self, model: nn.Module, n_queries: int = 6) -> None:
        """Attention of a few refinement queries over the patches of an unseen-pair test image (models with
        queries, e.g. Refiner-R)."""
        from unseen import report

        d = self.data
        unseen = np.flatnonzero(~d.seen_samples("test"))
        i = int(unseen[0]) if len(unseen) else 0
        path = d.image_path(d.test.images[i])
        x = clip_transforms(self.image_size, train=False)(read_image(path))
        model.eval()
        try:
            att = model.encode_images(x[None].to(self.device), return_attention=True).attention
        except ValueError:  # the model has no refinement queries
            return
        if att is None:
            return
        a = att[0, :, 1:].float().cpu().numpy()  # queries x patches (CLS dropped)
        side = int(round(np.sqrt(a.shape[1])))
        top = np.argsort(-a.max(1))[:n_queries]
        maps = a[top].reshape(len(top), side, side)
        img = np.asarray(read_image(path).resize((self.image_size,) * 2), np.float32) / 255
        a_, o_ = d.test.attr[i], d.test.obj[i]
        # one row: the image, then one column per query (the strongest-peaked ones, last refinement step)
        report.plot_attention_maps(
            img,
            [m[None] for m in maps],
            [f"query {q}" for q in top],
            [f"{d.attrs[a_]}\n{d.objs[o_]}"],
            self.run_dir / "plots" / "query_attention.png",
            title=f"Refiner-R queries (last refinement) on a test image of the unseen pair "
            f"'{d.attrs[a_]} {d.objs[o_]}'",
        )

    # ---- finished runs
    @classmethod
    def load_model(cls, run_dir: Path, cfg: RunConfig) -> nn.Module:
        from unseen.compositional.clip import create_clip

        vocab = json.loads((run_dir / "vocab.json").read_text())
        weights = run_dir / cls.weights_file
        if not weights.is_file():
            raise FileNotFoundError(f"{weights}: the run has no final model (did it finish?)")
        m = cfg.model
        clip = create_clip(m.clip_arch, m.clip_weights or None)
        model = create_model(
            m.name, m, "compositional", clip_model=clip, attr_names=vocab["attrs"], obj_names=vocab["objs"]
        )
        load_state_checked(
            model, weights, m.name
        )  # trainable tensors only: the frozen CLIP is not in state_dict()
        return model.eval()

    def load_fitted(self, selection: dict[str, Any]) -> Fitted:
        self.image_size = int(json.loads((self.run_dir / "vocab.json").read_text())["image_size"])
        return super().load_fitted(selection)

    @classmethod
    def predictor(cls, run_dir: Path) -> Predictor:
        """(state, object) pairs among the closed-world pairs; names are written ``state object``."""
        cfg = load_run_config(run_dir)
        model = cls.load_model(run_dir, cfg)
        vocab = json.loads((run_dir / "vocab.json").read_text())
        attrs, objs = vocab["attrs"], vocab["objs"]
        pairs = [tuple(p) for p in vocab["pairs"]]
        train = {tuple(p) for p in vocab["train_pairs"]}
        tf = clip_transforms(vocab["image_size"], train=False)

        def scorer(keep: np.ndarray):
            cand = [[attrs.index(pairs[i][0]), objs.index(pairs[i][1])] for i in keep]
            cache = model.encode_pairs(torch.as_tensor(cand, dtype=torch.long), cfg.model.text_chunk)

            def score(path: str) -> torch.Tensor:
                x = tf(read_image(path))[None]
                return model.score(model.encode_images(x), cache)["scores"][0]

            return score

        names = [f"{a} {o}" for a, o in pairs]
        return Predictor(names, [i for i, p in enumerate(pairs) if p in train], scorer)
