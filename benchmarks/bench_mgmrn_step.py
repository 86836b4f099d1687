"""Mg-MRN training throughput: default joint step vs the released three-pass schedule, and cached vs end-to-end.

Part 1 — images/s of one training step (forward + backward + optimizer step) for the same architecture, batch
and weights: ``step_mode=joint`` (one backbone pass, one step on L1+L2+L3) vs ``step_mode=sequential`` (the
release: forward, loss, backward, step per level). Runs are interleaved and the median over repeats reported.

Part 2 — time of one training epoch over N images: end to end (backbone fine-tuned, images decoded and
transformed) vs frozen backbone with its maps read from a feature cache (the one-off cache build reported
apart). End-to-end and cached epochs are interleaved (e2e, cached, e2e, ...).

Part 0 — the FLOP model (printed first, ``--no-flops`` skips it; meta tensors, no compute):
multiply-accumulates per image of each variant, counted by ``torch.utils.flop_counter`` over forward + backward
of the real model. Its ratios are what the measured ratios tend to when the convolutions dominate and backward
costs 2x forward (it costs more on CPU, so the measured step ratio lands a little below it). Faster kernels
(channels_last, bf16) speed up every variant alike; only removing arithmetic from one variant moves these
ratios. ``--profile`` prints the operator table of one joint step.

    python benchmarks/bench_mgmrn_step.py                      # CPU-sized defaults
    python benchmarks/bench_mgmrn_step.py --backbone resnet101 --image-size 448 --width 2048 --model-dim 1024 \
        --batch 16 --device cuda                                # the paper's sizes (GPU)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from unseen.attribute.mgmrn import MgMRN, MgMRNConfig
from unseen.features import FeatureCache, PackedMaps, extract, provenance


def make_model(args: argparse.Namespace, step_mode: str, n_attr: int) -> MgMRN:
    cfg = MgMRNConfig(
        backbone=args.backbone,
        width=args.width,
        model_dim=args.model_dim,
        step_mode=step_mode,
        tiny_widths=[32, 64, 128],
    )
    torch.manual_seed(0)
    return MgMRN(cfg, attribute_embeddings=torch.randn(n_attr, 300))


def release_step(
    model: MgMRN, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, attrs: torch.Tensor, amp: bool
) -> None:
    """The release literally: per level a FULL forward (all levels, all graphs), the loss of that level, a step."""
    for i, lv in enumerate(model.levels):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(x, attrs)
            loss, _ = model.loss([out["level_scores"][i]], [out["attr_preds"][i]], [lv], attrs, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def train_step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    attrs: torch.Tensor,
    amp: bool,
    release: bool = False,
) -> None:
    if release:
        return release_step(model, opt, x, y, attrs, amp)  # type: ignore[arg-type]
    for sub in model.train_substeps():
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            loss = model(x, attrs, targets=y, levels=sub)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_steps(args: argparse.Namespace, device: torch.device) -> dict:
    n_attr, n_cls = args.attributes, args.classes
    attrs = torch.rand(n_cls, n_attr, device=device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=g).to(device)
    y = torch.randint(0, n_cls, (args.batch,), generator=g).to(device)
    models = {}
    # joint = library default; release = the released schedule as released (3 full passes);
    # sequential = the same three-step schedule computing only what each level needs (step_mode=sequential)
    for mode, step_mode in (("joint", "joint"), ("release", "sequential"), ("sequential", "sequential")):
        m = make_model(args, step_mode, n_attr).to(device).train()
        models[mode] = (m, torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9, weight_decay=1e-5))
        m.load_state_dict(models["joint"][0].state_dict())
    amp = device.type == "cuda" and args.amp
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(args.warmup):
        for mode, (m, o) in models.items():
            train_step(m, o, x, y, attrs, amp, release=mode == "release")
    for _ in range(args.repeats):
        for mode, (m, o) in models.items():  # interleaved: drift affects all alike
            sync(device)
            t0 = time.perf_counter()
            train_step(m, o, x, y, attrs, amp, release=mode == "release")
            sync(device)
            times[mode].append(time.perf_counter() - t0)
    out = {
        mode: {"median_s": statistics.median(t), "images_per_s": args.batch / statistics.median(t)}
        for mode, t in times.items()
    }
    out["ratio_joint_over_release"] = out["joint"]["images_per_s"] / out["release"]["images_per_s"]
    out["ratio_joint_over_sequential"] = out["joint"]["images_per_s"] / out["sequential"]["images_per_s"]
    return out


def flop_model(args: argparse.Namespace) -> dict:
    """GMAC per image of each variant (forward + backward, no optimizer), counted on meta tensors.

    A stand-in loss (sum of the level's scores and predictions) replaces the real one, whose target check reads
    values; the backward through the network is the same, the loss itself is a few kFLOPs.
    """
    n_attr, n_cls = args.attributes, args.classes
    with torch.device("meta"):
        model = make_model(args, "joint", n_attr).train()
        x = torch.randn(1, 3, args.image_size, args.image_size)
        attrs = torch.rand(n_cls, n_attr)

    def stand_in(out: dict, idx: list[int]) -> torch.Tensor:
        return sum(out["level_scores"][i].sum() + out["attr_preds"][i].sum() for i in idx)  # type: ignore[return-value]

    def gmac(fn) -> float:
        with FlopCounterMode(display=False) as fc:
            fn()
        return fc.get_total_flops() / 2e9

    every = list(range(len(model.levels)))

    def release() -> None:  # a full forward per level, that level's loss backward
        for i in every:
            stand_in(model(x, attrs), [i]).backward()

    def pruned() -> None:
        for i in every:
            stand_in(model(x, attrs, levels=[i]), [0]).backward()

    out = {
        "forward": gmac(lambda: model(x, attrs)),
        "backbone_forward": gmac(lambda: model.backbone(x)),
        "joint": gmac(lambda: stand_in(model(x, attrs), every).backward()),
        "release": gmac(release),
        "sequential": gmac(pruned),
    }
    with torch.device("meta"):
        maps = [m.detach() for m in model.backbone(x)]
    model.backbone = PackedMaps([m.shape[1:] for m in maps], model.backbone.out_channels)
    flat = torch.cat([m.flatten(1) for m in maps], dim=1)
    out["cached_joint"] = gmac(lambda: stand_in(model(flat, attrs), every).backward())
    out["ceiling_joint_over_release"] = out["release"] / out["joint"]
    out["ceiling_joint_over_sequential"] = out["sequential"] / out["joint"]
    out["ceiling_epoch_speedup"] = out["joint"] / out["cached_joint"]
    return out


def profile_step(args: argparse.Namespace, device: torch.device, rows: int = 12) -> str:
    """Operator table (self time) of one joint training step after one warm-up step."""
    from torch.profiler import ProfilerActivity, profile

    n_attr, n_cls = args.attributes, args.classes
    model = make_model(args, "joint", n_attr).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=1e-5)
    attrs = torch.rand(n_cls, n_attr, device=device)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
    y = torch.randint(0, n_cls, (args.batch,), device=device)
    amp = device.type == "cuda" and args.amp
    train_step(model, opt, x, y, attrs, amp)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts, record_shapes=True) as prof:
        train_step(model, opt, x, y, attrs, amp)
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages(group_by_input_shape=True).table(
        sort_by=key, row_limit=rows, max_name_column_width=30
    )


def bench_epoch(args: argparse.Namespace, device: torch.device) -> dict:
    """Epoch over N images: end to end vs frozen backbone + feature cache (both joint mode)."""
    n, n_attr, n_cls = args.epoch_images, args.attributes, args.classes
    g = torch.Generator().manual_seed(1)
    images = torch.randn(n, 3, args.image_size, args.image_size, generator=g)
    labels = torch.randint(0, n_cls, (n,), generator=g)
    attrs = torch.rand(n_cls, n_attr, device=device)
    amp = device.type == "cuda" and args.amp

    def run_epoch(model: nn.Module, ds: TensorDataset) -> float:
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
        sync(device)
        t0 = time.perf_counter()
        for xb, yb in DataLoader(ds, batch_size=args.batch, shuffle=True):
            train_step(model, opt, xb.to(device), yb.to(device), attrs, amp)
        sync(device)
        return time.perf_counter() - t0

    e2e = make_model(args, "joint", n_attr).to(device).train()
    frozen = make_model(args, "joint", n_attr).to(device)
    backbone = frozen.backbone.eval()
    with tempfile.TemporaryDirectory() as tmp:
        cache = FeatureCache(Path(tmp) / "maps")
        t0 = time.perf_counter()
        feats, meta = cache.load_or_build(
            provenance(args.backbone, backbone, "bench", [str(i) for i in range(n)]),
            lambda: extract(backbone, TensorDataset(images, labels), args.batch, device),
        )
        build_s = time.perf_counter() - t0
        frozen.backbone = PackedMaps(meta["shapes"], backbone.out_channels)
        frozen.train()
        cached_ds = TensorDataset(torch.from_numpy(feats), labels)
        e2e_t, cached_t = [], []
        for _ in range(args.epoch_repeats):  # interleaved: drift affects both alike
            e2e_t.append(run_epoch(e2e, TensorDataset(images, labels)))
            cached_t.append(run_epoch(frozen, cached_ds))
    return {
        "images": n,
        "end_to_end_epoch_s": statistics.median(e2e_t),
        "cached_epoch_s": statistics.median(cached_t),
        "cache_build_s": build_s,
        "cache_mb": feats.nbytes / 2**20,
        "speedup": statistics.median(e2e_t) / statistics.median(cached_t),
    }


def _print_steps(res: dict, s: dict) -> None:
    res["steps"] = s
    for mode, label in (
        ("joint", "joint (default)"),
        ("release", "three-pass, as released"),
        ("sequential", "three-pass, pruned"),
    ):
        print(
            f"step  {label:24s} {s[mode]['images_per_s']:8.2f} img/s  (median {s[mode]['median_s']:.3f} s/step)"
        )
    print(
        f"ratio joint / released three-pass: {s['ratio_joint_over_release']:.2f}x;"
        f" joint / pruned three-pass: {s['ratio_joint_over_sequential']:.2f}x"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--model-dim", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--attributes", type=int, default=312)
    p.add_argument("--classes", type=int, default=150)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--epoch-images", type=int, default=64)
    p.add_argument("--epoch-repeats", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    p.add_argument("--skip-epoch", action="store_true")
    p.add_argument("--skip-steps", action="store_true")
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP model")
    p.add_argument("--profile", action="store_true", help="print the operator table of one joint step")
    p.add_argument("--json", default="", help="also write the results here")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    res = {
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "args": vars(args),
    }
    if os.path.exists("/proc/loadavg"):
        res["load_before"] = Path("/proc/loadavg").read_text().split()[:3]
    if not args.no_flops:
        fm = res["flops"] = flop_model(args)
        print(
            f"GMAC/image: forward {fm['forward']:.1f} (backbone {fm['backbone_forward']:.1f}); step joint "
            f"{fm['joint']:.1f}, released three-pass {fm['release']:.1f}, pruned three-pass {fm['sequential']:.1f}, "
            f"joint on cached maps {fm['cached_joint']:.1f}"
        )
        print(
            f"FLOP-model ceilings: joint / released {fm['ceiling_joint_over_release']:.2f}x, joint / pruned "
            f"{fm['ceiling_joint_over_sequential']:.2f}x, end-to-end / cached epoch {fm['ceiling_epoch_speedup']:.2f}x"
        )
    if args.profile:
        print(profile_step(args, device))
    if not args.skip_steps:
        _print_steps(res, bench_steps(args, device))
    if not args.skip_epoch:
        e = res["epoch"] = bench_epoch(args, device)
        print(
            f"epoch over {e['images']} images: end-to-end {e['end_to_end_epoch_s']:.2f} s, cached {e['cached_epoch_s']:.2f} s "
            f"({e['speedup']:.1f}x; one-off cache build {e['cache_build_s']:.2f} s, {e['cache_mb']:.0f} MB)"
        )
    if os.path.exists("/proc/loadavg"):
        res["load_after"] = Path("/proc/loadavg").read_text().split()[:3]
        print(f"load average before {' '.join(res['load_before'])}, after {' '.join(res['load_after'])}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(res, indent=2, default=lambda o: o if not isinstance(o, np.generic) else o.item())
        )


if __name__ == "__main__":
    main()
