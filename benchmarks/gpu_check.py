"""Throughput and peak memory of the real configs' models at paper size: Mg-MRN and Refiner-R, fp32 vs AMP (bf16).

One command, no data (random tensors as images), no weights (random init: speed and memory do not depend on the
values); the models are built by :func:`unseen.registry.create_model` from the model sections of the packaged
configs (``attribute/mgmrn_cub``: ResNet-101, 448 px, width 2048, sequential steps; ``compositional/
refiner_mit_states``: CLIP ViT-L/14, 224 px, 32 queries refining 8 blocks, MIT-States vocabulary sizes). It
measures per (model, precision): training-step images/s (forward + loss + backward + optimizer step, the
config's batch size and optimizer), evaluation images/s (no grad, scores over all classes / the test candidate
pairs) and the peak memory (``torch.cuda.max_memory_allocated`` per measurement on a GPU; the process's peak RSS
so far on the CPU). Each measurement runs ``--steps`` timed steps after ``--warmup`` untimed ones, or stops early
after ``--budget-s`` seconds, so the whole script fits a few minutes of device time.

    python benchmarks/gpu_check.py --output $OUT/gpu_check            # GPU, paper sizes (~3-5 min on one GPU)
    python benchmarks/gpu_check.py --device cpu --small               # tiny sizes, seconds (what the test runs)

Writes a Markdown table (with the device name) to stdout and, with ``--output P``, ``P.md`` and ``P.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

# the benchmark datasets' class-space sizes (CUB: 200 classes, 150 seen, 312 attributes; MIT-States: 115 states,
# 245 objects, 1,262 train pairs, 800 test candidate pairs (400 seen + 400 unseen, closed world)
CUB = {"classes": 200, "seen": 150, "attributes": 312}
MIT = {"states": 115, "objects": 245, "train_pairs": 1262, "test_pairs": 800}

SMALL_MGMRN = ["model.backbone=tiny", "model.width=64", "model.model_dim=32", "data.image_size=32"]
SMALL_REFINER = ["model.clip_arch=unseen-tiny-clip", "model.n_queries=4", "model.refine_blocks=1"]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} CPUs)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} CPUs)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux; process-wide, monotone


def measure(
    step: Callable[[], None], batch: int, device: torch.device, warmup: int, steps: int, budget_s: float
) -> dict[str, Any]:
    """images/s over up to ``steps`` timed calls of ``step`` (after ``warmup``), stopping after ``budget_s``."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    n = 0
    while n < steps:
        step()
        n += 1
        if n % 5 == 0 or n == steps:  # sync only now and then: a per-step sync would serialise the launches
            sync(device)
            if time.perf_counter() - t0 > budget_s:
                break
    sync(device)
    dt = time.perf_counter() - t0
    return {
        "steps": n,
        "seconds": round(dt, 2),
        "images_per_s": round(n * batch / dt, 1),
        "peak_mb": peak_mb(device),
    }


def packaged(name: str, overrides: list[str]) -> Any:
    from unseen.config import load_config
    from unseen.runs import resolve_config_path

    return load_config(resolve_config_path(name), overrides)


# --------------------------------------------------------------------------------------------- Mg-MRN
def mgmrn_case(args: argparse.Namespace, device: torch.device, amp: bool) -> dict[str, Any]:
    from unseen.registry import create_model

    cfg = packaged("attribute/mgmrn_cub", (SMALL_MGMRN if args.small else []) + args.mgmrn_override)
    torch.manual_seed(0)
    n_attr = CUB["attributes"]
    model = create_model(
        cfg.model.name, cfg.model, "attribute", attribute_embeddings=torch.randn(n_attr, 300)
    ).to(device)
    batch = args.batch or cfg.train.batch_size
    size = cfg.data.image_size
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, CUB["seen"], (batch,), device=device)
    seen_attrs = torch.randn(CUB["seen"], n_attr, device=device)
    all_attrs = torch.randn(CUB["classes"], n_attr, device=device)
    t = cfg.train
    opt = torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)

    def train_step() -> None:
        for sub in model.train_substeps():  # the config's step_mode (sequential: one step per level)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = model(x, seen_attrs, targets=y, levels=sub)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    @torch.no_grad()
    def eval_step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            model(x, all_attrs)["scores"].float()

    model.train()
    tr = measure(train_step, batch, device, args.warmup, args.steps, args.budget_s)
    model.eval()
    ev = measure(eval_step, batch, device, args.warmup, args.steps, args.budget_s)
    shape = f"{cfg.model.backbone} {size}px width {cfg.model.width} {cfg.model.step_mode} bs {batch}"
    return {"model": "Mg-MRN (attribute/mgmrn_cub)", "shape": shape, "train": tr, "eval": ev}


# --------------------------------------------------------------------------------------------- Refiner-R
def refiner_case(args: argparse.Namespace, device: torch.device, amp: bool) -> dict[str, Any]:
    from unseen.compositional.clip import create_clip
    from unseen.registry import create_model

    cfg = packaged(
        "compositional/refiner_mit_states", (SMALL_REFINER if args.small else []) + args.refiner_override
    )
    m = cfg.model
    torch.manual_seed(0)
    clip = create_clip(m.clip_arch, None, device)  # random init: speed and memory only
    size = clip.visual.image_size
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    states = [f"state{i}" for i in range(MIT["states"])]
    objs = [f"object{i}" for i in range(MIT["objects"])]
    model = create_model(m.name, m, "compositional", clip_model=clip, attr_names=states, obj_names=objs).to(
        device
    )
    batch = args.batch or (8 if args.small else cfg.train.batch_size)
    g = torch.Generator().manual_seed(0)

    def pairs(n: int) -> torch.Tensor:
        idx = torch.randperm(MIT["states"] * MIT["objects"], generator=g)[:n]
        return torch.stack([idx // MIT["objects"], idx % MIT["objects"]], 1).to(device)

    # --small: fewer pairs, since every training step encodes all training-pair prompts with the text tower
    n_train, n_test = (64, 64) if args.small else (MIT["train_pairs"], MIT["test_pairs"])
    train_pairs, test_pairs = pairs(n_train), pairs(n_test)
    x = torch.randn(batch, 3, size, size, device=device)
    target = torch.randint(0, len(train_pairs), (batch,), device=device)
    attr, obj = train_pairs[target, 0], train_pairs[target, 1]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)

    def train_step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss, _ = model.loss(model(x, train_pairs), attr, obj, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.eval()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        cache = model.encode_pairs(test_pairs, m.text_chunk)  # once per evaluation, as the task does

    @torch.no_grad()
    def eval_step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            model.score(model.encode_images(x), cache)["scores"].float()

    model.train()
    tr = measure(train_step, batch, device, args.warmup, args.steps, args.budget_s)
    model.eval()
    ev = measure(eval_step, batch, device, args.warmup, args.steps, args.budget_s)
    trainable = sum(p.numel() for p in params) / 1e6
    shape = f"{m.clip_arch} {size}px, {m.n_queries} queries x {m.refine_blocks} blocks, bs {batch}"
    return {
        "model": "Refiner-R (compositional/refiner_mit_states)",
        "shape": f"{shape}, {trainable:.1f}M trainable",
        "train": tr,
        "eval": ev,
    }


CASES = {"mgmrn": mgmrn_case, "refiner": refiner_case}


def table(rows: list[dict[str, Any]], device: str) -> str:
    lines = [
        f"Device: {device}; torch {torch.__version__}",
        "",
        "| model | shape | precision | train img/s | train peak MB | eval img/s | eval peak MB | steps (train/eval) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | | {r['precision']} | error: {r['error']} | | | | |")
            continue
        tr, ev = r["train"], r["eval"]
        lines.append(
            f"| {r['model']} | {r['shape']} | {r['precision']} | {tr['images_per_s']:.1f} | {tr['peak_mb']:.0f} "
            f"| {ev['images_per_s']:.1f} | {ev['peak_mb']:.0f} | {tr['steps']}/{ev['steps']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--small", action="store_true", help="tiny backbone / CLIP, small images (CPU smoke run)")
    p.add_argument("--models", default="mgmrn,refiner")
    p.add_argument("--precisions", default="fp32,amp", help="fp32 and/or amp (bf16 autocast)")
    p.add_argument("--batch", type=int, default=0, help="0 = the config's train.batch_size")
    p.add_argument("--steps", type=int, default=100, help="timed steps per measurement (at most)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--budget-s", type=float, default=20.0, help="stop a measurement after this many seconds")
    p.add_argument("--mgmrn-override", action="append", default=[], help="extra dotted override (repeatable)")
    p.add_argument(
        "--refiner-override", action="append", default=[], help="extra dotted override (repeatable)"
    )
    p.add_argument("--output", help="write OUTPUT.md and OUTPUT.json")
    args = p.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its kernels once (warm-up steps)
    name = device_name(device)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for key in [k for k in args.models.split(",") if k]:
        for prec in [k for k in args.precisions.split(",") if k]:
            t1 = time.perf_counter()
            try:
                r = CASES[key](args, device, amp=prec == "amp")
            # an out-of-memory case is recorded and the others still run
            except torch.cuda.OutOfMemoryError as exc:
                r = {"model": key, "error": f"out of memory ({str(exc).splitlines()[0][:80]})"}
            r["precision"] = "bf16 AMP" if prec == "amp" else "fp32"
            rows.append(r)
            print(
                f"{key} {prec}: {time.perf_counter() - t1:.1f}s {json.dumps(r)}", file=sys.stderr, flush=True
            )
            if device.type == "cuda":
                torch.cuda.empty_cache()
    md = table(rows, name)
    out = {
        "device": name,
        "torch": torch.__version__,
        "small": args.small,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "rows": rows,
        "total_s": round(time.perf_counter() - t0, 1),
    }
    print(md)
    print(f"\ntotal {out['total_s']} s")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(f"{args.output}.md").write_text(md + "\n")
        Path(f"{args.output}.json").write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
