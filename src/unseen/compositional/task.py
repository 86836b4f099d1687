"""Compositional ZSL runs: czsl folder -> frozen CLIP + method -> engine -> streaming evaluator -> run folder.

Protocol (spec §0, §5-§7): training targets index ``train_pairs`` (file order); after every epoch the closed-world
validation AUC (candidates = train + val pairs) is computed and the best epoch kept; its checkpoint is tested once,
closed world (candidates = train + test pairs) and open world (all |A|·|O| pairs; the feasibility threshold is the
first best of 50 chosen on the **validation** set, infeasible unseen pairs excluded). Zero-shot CLIP trains nothing.
Scores are streamed to the evaluator image batch by image batch: memory does not grow with the number of pairs
beyond the encoded candidate texts.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from unseen.compositional.data import (
    CZSLData,
    CZSLImageDataset,
    clip_transforms,
    feasibility_scores,
    load_czsl,
    load_feasibility,
    load_glove_vectors,
)
from unseen.compositional.metrics import CZSLResult, StreamingEvaluator, ThresholdSearch, open_world_keep_mask
from unseen.config import RunConfig, build_dataclass, config_hash, dump_yaml, to_dict
from unseen.engine import Engine, progress, resolve_device
from unseen.io import (
    atomic_write_json,
    atomic_write_text,
    load_safetensors,
    save_safetensors,
    short_hash,
    single_process_cache,
    versions,
)
from unseen.registry import create_model, get_dataset_entry, register_dataset

log = logging.getLogger("unseen")


# --------------------------------------------------------------------------------------------- datasets
@dataclass
class Prepared:
    data: CZSLData
    image_size: int
    feasibility: np.ndarray | None  # (|A|·|O|,) in OW order, or None (no open-world evaluation)
    clip_weights: str = ""  # suggested CLIP weights (shapes: the pretrained tiny CLIP)
    world: dict | None = None


@dataclass
class CZSLConfig:
    """A user's copy of MIT-States, UT-Zappos or C-GQA in the czsl layout."""

    name: str = "czsl"
    root: str = ""  # <root>/images, <root>/compositional-split-natural/, <root>/metadata_compositional-split-natural.t7
    split: str = "compositional-split-natural"
    image_size: int = 224
    feasibility: str = ""  # feasibility_<dataset>.pt ({'feasibility': tensor over OW pairs}), or
    glove: str = (
        ""  # a GloVe text file (glove.6B.300d.txt) to compute CompCos feasibility; neither = no open world
    )
    check_images: bool = True


@dataclass
class ShapesConfig:
    """The embedded compositional world (rendered, exported to the czsl layout, read back by the czsl reader)."""

    name: str = "shapes"
    root: str = ""  # default: $UNSEEN_CACHE/shapes-czsl-<hash>
    world: dict = field(default_factory=dict)  # CompositionalWorldConfig fields
    pretrain: dict = field(
        default_factory=dict
    )  # CLIPPretrainConfig fields (the tiny CLIP, train pairs only)


def _feasibility(data: CZSLData, feasibility: str, glove: str) -> np.ndarray | None:
    if feasibility:
        return load_feasibility(feasibility, data.n_open_pairs)
    if glove:
        vectors = load_glove_vectors(glove, [*data.attrs, *data.objs])
        return feasibility_scores(data.attrs, data.objs, data.train_pairs, vectors)
    return None


@register_dataset("czsl", setting="compositional", config=CZSLConfig)
def prepare_czsl(cfg: CZSLConfig, model_cfg: Any = None) -> Prepared:
    """MIT-States / UT-Zappos / C-GQA from a czsl folder (pairs files + metadata .t7 + images)."""
    if not cfg.root:
        raise ValueError(
            "data.root: the dataset folder (with images/ and compositional-split-natural/) is required"
        )
    data = load_czsl(cfg.root, cfg.split, check_images=cfg.check_images)
    if data.missing_images:
        raise FileNotFoundError(
            f"{cfg.root}: {len(data.missing_images)} images listed in the metadata are missing "
            f"(e.g. {data.missing_images[0]}); `unseen data check czsl --root {cfg.root}` lists them"
        )
    return Prepared(data, cfg.image_size, _feasibility(data, cfg.feasibility, cfg.glove))


@register_dataset("shapes", setting="compositional", config=ShapesConfig)
def prepare_shapes(cfg: ShapesConfig, model_cfg: Any = None) -> Prepared:
    """The embedded compositional world + its small CLIP, pretrained on train-pair images and captions only."""
    from unseen.compositional.pretrain import CLIPPretrainConfig, pretrained_path, pretrained_tiny_clip
    from unseen.shapes.compositional_world import (
        CompositionalWorldConfig,
        cached_compositional_world,
        world_key,
    )

    wcfg = build_dataclass(CompositionalWorldConfig, cfg.world, "data.world")
    wcfg.validate()
    root = Path(cfg.root) if cfg.root else None
    if root is None:
        from unseen.io import cache_root

        single_process_cache(
            cache_root() / f"shapes-czsl-{world_key(wcfg)}", cache_root(), "render the world"
        )
    root = cached_compositional_world(wcfg, root or "")
    pcfg = build_dataclass(CLIPPretrainConfig, cfg.pretrain, "data.pretrain")
    weights = ""
    if model_cfg is None or getattr(model_cfg, "clip_arch", "") == pcfg.arch:
        single_process_cache(pretrained_path(root, pcfg), root, "pretrain the CLIP")
        weights = str(pretrained_tiny_clip(root, pcfg))
    data = load_czsl(root)
    return Prepared(
        data,
        wcfg.image_size,
        _feasibility(data, "", str(root / "glove.txt")),
        weights,
        {"world": to_dict(wcfg), "pretrain": to_dict(pcfg)},
    )


# --------------------------------------------------------------------------------------------- scoring
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


class CompositionalRun:
    """One method on one compositional dataset, in one run folder (protocol: module docstring)."""

    def __init__(self, cfg: RunConfig, run_dir: str | Path, resume: bool = False) -> None:
        self.cfg, self.run_dir, self.resume = cfg, Path(run_dir), resume
        self.rank = int(os.environ.get("RANK", "0"))
        self.prep: Prepared = get_dataset_entry(cfg.data.name, "compositional").builder(cfg.data, cfg.model)
        self.data = self.prep.data
        self.device = resolve_device(cfg.train.device)
        m = cfg.model
        if not m.clip_weights and self.prep.clip_weights:
            m.clip_weights = self.prep.clip_weights  # recorded in config.yaml

    def build_model(self) -> nn.Module:
        from unseen.compositional.clip import create_clip

        torch.manual_seed(self.cfg.seed)
        m = self.cfg.model
        clip = create_clip(m.clip_arch, m.clip_weights or None, self.device)
        size = getattr(clip.visual, "image_size", self.prep.image_size)
        self.image_size = int(
            size[0] if isinstance(size, (tuple, list)) else size
        )  # the CLIP's input resolution
        return create_model(
            m.name, m, "compositional", clip_model=clip, attr_names=self.data.attrs, obj_names=self.data.objs
        ).to(self.device)

    def loader(self, split: str, train: bool = False) -> DataLoader:
        ds = CZSLImageDataset(self.data, split, clip_transforms(self.image_size, train=train))
        return DataLoader(ds, batch_size=self.cfg.eval.batch_size, num_workers=self.cfg.train.num_workers)

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
        stream_scores(
            model,
            self.loader(split),
            _pairs_tensor(d.pair_attr[cand], d.pair_obj[cand]),
            [(ev, cand)],
            self.device,
            self.cfg.model.text_chunk,
            f"{split} (closed world)",
        )
        return ev.result()

    def open_world(self, model: nn.Module) -> tuple[CZSLResult, dict[str, Any]]:
        """Threshold chosen on validation (one pass), then the test evaluation with the kept columns."""
        d, f = self.data, self.prep.feasibility
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
        stream_scores(
            model,
            self.loader("test"),
            _pairs_tensor(ow_attr[cols], ow_obj[cols]),
            [(ev, cols)],
            self.device,
            self.cfg.model.text_chunk,
            "test (open world)",
        )
        info = {
            "threshold": th.threshold,
            "val_AUC": th.best_auc,
            "kept_unseen_pairs": int((keep & ~seen).sum()),
            "unseen_pairs": int((~seen).sum()),
            "rule": "first best validation AUC over 50 feasibility thresholds; "
            "infeasible unseen pairs excluded",
        }
        return ev.result(), info

    def chance(self) -> dict[str, float]:
        """Evaluator output for i.i.d. uniform scores (closed world test; open world with every pair kept)."""
        d = self.data
        rng = np.random.default_rng(self.cfg.seed)
        out = {}
        for world in ("cw", "ow"):
            if world == "cw":
                pairs, seen, mask, gt = (
                    _pairs_tensor(d.pair_attr, d.pair_obj).numpy(),
                    d.seen_mask(),
                    d.eval_mask("test"),
                    d.targets("test"),
                )
            else:
                pairs = np.stack(np.divmod(np.arange(d.n_open_pairs), d.n_objs), 1)
                seen, gt = d.seen_mask("open"), d.targets("test", "open")
                mask = np.ones(d.n_open_pairs, bool)
            s = rng.random((len(gt), len(pairs)), dtype=np.float32)
            ev = StreamingEvaluator(pairs, seen, mask, gt, d.test.attr, d.test.obj)
            ev.update(s)
            out.update({f"{world}/{k}": v for k, v in _result_dict(ev.result()).items()})
        return out

    # ---- the protocol
    def run(self) -> dict[str, Any]:
        cfg, d = self.cfg, self.data
        self.run_dir.mkdir(parents=True, exist_ok=True)
        model = self.build_model()
        if self.rank == 0:
            atomic_write_text(self.run_dir / "config.yaml", dump_yaml(cfg))
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
        t0 = time.perf_counter()
        log.info("%s", d.summary())
        selection: dict[str, Any]
        if any(p.requires_grad for p in model.parameters()):
            train_pairs = _pairs_tensor(d.pair_attr[d.train_to_closed], d.pair_obj[d.train_to_closed]).to(
                self.device
            )

            def loss_fn(m: nn.Module, batch: Any, sub: Any) -> tuple[torch.Tensor, dict[str, float]]:
                images, attr, obj, pair = batch
                out = m(images, train_pairs)
                return m.loss(out, attr, obj, pair)

            def evaluate(m: nn.Module, epoch: int) -> dict[str, Any]:
                return _result_dict(self.closed_world(m, "val"))

            engine = Engine(cfg.train, self.run_dir / "train", seed=cfg.seed)
            resume = self.resume and (self.run_dir / "train" / "last.state.pt").is_file()
            train_set = CZSLImageDataset(d, "train", clip_transforms(self.image_size, train=True))
            fit = engine.fit(
                model,
                train_set,
                loss_fn,
                evaluate,
                select="AUC",
                epochs=cfg.train.epochs,
                resume=resume,
                meta={"config": json.dumps(to_dict(cfg))},
            )
            load_weights_nonstrict(model, self.run_dir / "train" / "best.safetensors")
            best = next((h for h in fit.history if h["epoch"] == fit.best_epoch), {})
            selection = {
                "rule": "epoch with the best closed-world validation AUC (candidates: train + val pairs)",
                "epoch": fit.best_epoch,
                **{f"val_{k[4:]}": v for k, v in best.items() if k.startswith("val/")},
            }
        else:
            val = self.closed_world(model, "val")
            selection = {
                "rule": "no training (zero-shot)",
                **{f"val_{k}": v for k, v in _result_dict(val).items()},
            }
        cw = self.closed_world(model, "test")
        metrics = {f"cw/{k}": v for k, v in _result_dict(cw).items()}
        ow_info = None
        if self.prep.feasibility is not None:
            ow, ow_info = self.open_world(model)
            metrics.update({f"ow/{k}": v for k, v in _result_dict(ow).items()})
        results = {
            "setting": "compositional",
            "method": cfg.model.name,
            "dataset": d.dataset or d.root.name,
            "data_root": str(d.root),
            "metrics": metrics,
            "selection": selection,
            "open_world": ow_info,
            "ambiguous_samples_cw": cw.n_ambiguous,
            "chance": self.chance(),
            "counts": {
                "attrs": d.n_attrs,
                "objs": d.n_objs,
                "train_pairs": len(d.train_pairs),
                "cw_pairs": d.n_pairs,
                "ow_pairs": d.n_open_pairs,
                "images": {"train": len(d.train), "val": len(d.val), "test": len(d.test)},
            },
            "seed": cfg.seed,
            "config_hash": config_hash(cfg),
            "data_fingerprint": short_hash(d.summary() + json.dumps(d.pairs)),
            "world": self.prep.world,
            "versions": versions(),
            "wall_time_s": time.perf_counter() - t0,
        }
        if self.rank == 0:
            save_safetensors(self.run_dir / "model.safetensors", model.state_dict())
            atomic_write_json(self.run_dir / "results.json", results)
            self.plots(model, cw, results)
        return results

    def plots(self, model: nn.Module, cw: CZSLResult, results: dict[str, Any]) -> None:
        from unseen import report

        try:
            report.plot_seen_unseen_curve(
                cw,
                self.run_dir / "plots" / "seen_unseen_curve.png",
                title=f"{results['method']} on {results['dataset']}: closed-world test",
            )
            if hasattr(model, "encode_images") and self.cfg.model.name == "refiner":
                self.plot_query_attention(model)
        except Exception as exc:  # a plot must never lose a finished run
            log.warning("could not write the plots: %s", exc)

    @torch.no_grad()
    def plot_query_attention(self, model: nn.Module, n_queries: int = 6) -> None:
        """Attention of a few refinement queries over the patches of an unseen-pair test image."""
        from PIL import Image

        from unseen import report

        d = self.data
        unseen = np.flatnonzero(~d.seen_samples("test"))
        i = int(unseen[0]) if len(unseen) else 0
        path = d.image_path(d.test.images[i])
        x = clip_transforms(self.image_size, train=False)(Image.open(path).convert("RGB"))
        model.eval()
        att = model.encode_images(x[None].to(self.device), return_attention=True).attention
        if att is None:
            return
        a = att[0, :, 1:].float().cpu().numpy()  # queries x patches (CLS dropped)
        side = int(round(np.sqrt(a.shape[1])))
        top = np.argsort(-a.max(1))[:n_queries]
        maps = a[top].reshape(len(top), side, side)
        img = np.asarray(Image.open(path).convert("RGB").resize((self.image_size,) * 2), np.float32) / 255
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


def load_weights_nonstrict(model: nn.Module, path: Path) -> None:
    """Trainable weights only (the frozen CLIP is not in the file: it comes from ``model.clip_weights``)."""
    model.load_state_dict(load_safetensors(path), strict=False)


# --------------------------------------------------------------------------------------------- runs.py hooks
run_class = CompositionalRun


def load_trained_model(run_dir: Path) -> tuple[nn.Module, RunConfig, dict]:
    from unseen.compositional.clip import create_clip
    from unseen.config import load_config

    cfg = load_config(run_dir / "config.yaml")
    vocab = json.loads((run_dir / "vocab.json").read_text())
    weights = run_dir / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: the run has no final model (did it finish?)")
    m = cfg.model
    clip = create_clip(m.clip_arch, m.clip_weights or None)
    model = create_model(
        m.name, m, "compositional", clip_model=clip, attr_names=vocab["attrs"], obj_names=vocab["objs"]
    )
    load_weights_nonstrict(model, weights)
    return model.eval(), cfg, vocab


def evaluate_saved(run_dir: Path) -> dict[str, Any]:
    """Recompute a finished run's closed- and open-world test metrics from its saved model."""
    model, cfg, vocab = load_trained_model(run_dir)
    run = CompositionalRun(cfg, run_dir)
    run.image_size = int(vocab["image_size"])
    model.to(run.device)
    out = {f"cw/{k}": v for k, v in _result_dict(run.closed_world(model, "test")).items()}
    if run.prep.feasibility is not None:
        ow, _ = run.open_world(model)
        out.update({f"ow/{k}": v for k, v in _result_dict(ow).items()})
    return out


def predict_images(run_dir: Path, images: list[str], classes: str, topk: int) -> list[dict]:
    """Top (state, object) pairs per image among the closed-world pairs (``classes``: all | seen | unseen | names
    written ``state object``)."""
    from PIL import Image

    from unseen.runs import select_classes

    model, cfg, vocab = load_trained_model(run_dir)
    attrs, objs = vocab["attrs"], vocab["objs"]
    pairs = [tuple(p) for p in vocab["pairs"]]
    train = {tuple(p) for p in vocab["train_pairs"]}
    names = [f"{a} {o}" for a, o in pairs]
    keep = select_classes(names, [i for i, p in enumerate(pairs) if p in train], classes)
    cand = torch.as_tensor(
        [[attrs.index(pairs[i][0]), objs.index(pairs[i][1])] for i in keep], dtype=torch.long
    )
    tf = clip_transforms(vocab["image_size"], train=False)
    cache = model.encode_pairs(cand, cfg.model.text_chunk)
    out = []
    for path in images:
        x = tf(Image.open(path).convert("RGB"))[None]
        with torch.no_grad():
            s = model.score(model.encode_images(x), cache)["scores"][0]
        vals, idx = s.topk(min(topk, len(keep)))
        out.append(
            {
                "image": path,
                "top": [
                    {"class": names[int(keep[i])], "score": float(v), "seen": pairs[int(keep[i])] in train}
                    for v, i in zip(vals.tolist(), idx.tolist())
                ],
            }
        )
    return out


DEMO_METHODS = ["demo_refiner", "demo_csp", "demo_zeroshot"]
DEMO_TITLE = (
    "embedded compositional benchmark (%): closed world (CW) and open world (OW); AUC, best HM, best seen "
    "S, best unseen U; state/object accuracy (CW, unbiased); epoch and OW threshold chosen on validation"
)
DEMO_COLUMNS = [
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
]
DEMO_FOOTER = (
    "Refiner-R = our reconstruction of Refiner (no public code); the CLIP is a small hybrid ViT pretrained on "
    "clean renders of the world's training pairs only (the benchmark's images are cluttered), then frozen."
)


def demo_rows(res: dict[str, Any], elapsed: str) -> list[dict[str, Any]]:
    return [{"method": res["method"], **res["metrics"], "time": elapsed}]


__all__ = ["CompositionalRun", "CZSLConfig", "ShapesConfig", "stream_scores", "load_trained_model"]
