"""Full-size rehearsal of the README's real-dataset commands, on replicas of the real datasets' folder layouts.

From the real fixture files in ``../shared/data`` it builds, under a work folder outside the repository:

- xlsa17 CUB / SUN / AWA2: ``xlsa17/<DS>/`` with links to the real ``att_splits.mat``, class lists and attribute
  word vectors, the real image list as ``image_list.json.gz``, and one tiny JPEG (solid class colour + noise) at
  every real relative path of ``image_lists/<DS>.json.gz`` under the dataset's own image root (``CUB_200_2011``,
  the SUN folder holding ``images/``, ``Animals_with_Attributes2/JPEGImages``): 11,788 / 14,340 / 37,322 files.
- NUS-WIDE: the real 1,006-label space (``TagList1k.txt``, ``Concepts81.txt``, the GloVe pickle, linked), tiny
  JPEGs for a reduced number of train / test images (the full 161,789 / 107,859 would need hours of CPU
  extraction), ``nus_wide_{train,test}.h5`` written by ``unseen extract`` with a VGG-19 weights file.

Then it runs, as subprocesses the way a user would, the README's commands with the real configs and only
CPU-size overrides (backbone, image size, epochs / batches, workers, output folder): ``unseen data check``,
``unseen extract``, ``unseen train``, ``unseen train --resume``, ``unseen eval``, ``unseen predict``. For every
step it records the wall time and the child's peak RSS (``os.wait4``), and prints a Markdown table.

Weights: the real configs refuse a backbone without weights. Instead of ``model.allow_random_init=true`` the
rehearsal saves a randomly initialised state dict of the overriding architecture (TinyBackbone for Mg-MRN,
VGG-19 ``features`` for extraction) and passes it as ``model.backbone_weights`` / ``--weights``, so that the
weights-loading path a real user takes is exercised too.

    python benchmarks/rehearsal.py                                   # everything (CUB, SUN, AWA2, NUS-WIDE)
    python benchmarks/rehearsal.py --datasets CUB --no-nus           # the slow test's reduced version
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"

# where the xlsa17 reader cuts a stored path (attribute/data.py ANCHORS) -> the image root a user passes
IMAGE_ROOTS = {"CUB": "CUB_200_2011", "SUN": "SUN", "AWA2": "Animals_with_Attributes2/JPEGImages"}
ANCHOR_CUT = {"CUB": "CUB_200_2011/", "SUN": None, "AWA2": "JPEGImages/"}
CONFIGS = {"CUB": "mgmrn_cub", "SUN": "mgmrn_sun", "AWA2": "mgmrn_awa2"}


# --------------------------------------------------------------------------------------------- steps
class Recorder:
    """Runs CLI steps as child processes and records wall time and peak RSS of each."""

    def __init__(self, log_dir: Path, threads: int) -> None:
        self.rows: list[dict[str, Any]] = []
        self.log_dir = log_dir
        self.env = {**os.environ, "OMP_NUM_THREADS": str(threads), "CI": "true", "HF_HUB_OFFLINE": "1"}

    def run(self, name: str, argv: list[str], cwd: Path = REPO, check: bool = True) -> dict[str, Any]:
        log = self.log_dir / f"{len(self.rows):02d}-{name.replace(' ', '_').replace('/', '_')}.log"
        t0 = time.perf_counter()
        with open(log, "w") as fh:
            proc = subprocess.Popen(argv, cwd=cwd, env=self.env, stdout=fh, stderr=subprocess.STDOUT)
            # wait4 gives this child's own rusage (RUSAGE_CHILDREN would be the running maximum over all)
            _, status, ru = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        out = log.read_text()
        row = {
            "step": name,
            "command": " ".join(a if " " not in a else repr(a) for a in argv[2:]),
            "wall_s": round(wall, 1),
            "peak_rss_mb": round(ru.ru_maxrss / 1024, 0),  # Linux: KiB
            "rc": proc.returncode,
            "log": str(log),
        }
        self.rows.append(row)
        print(f"[{name}] rc={proc.returncode} {wall:.1f}s {row['peak_rss_mb']:.0f} MB", flush=True)
        if check and proc.returncode != 0:
            raise RuntimeError(f"step '{name}' failed (rc {proc.returncode}); log {log}:\n{out[-3000:]}")
        row["output"] = out
        return row


def unseen(*args: str) -> list[str]:
    return [sys.executable, "-m", "unseen", *args]


def run_dir_of(output: str) -> str:
    """The run folder printed by ``unseen train`` (a JSON object with ``run_dir``)."""
    start = output.rfind('{\n  "run_dir"')
    if start < 0:
        raise RuntimeError(f"no run_dir in the train output:\n{output[-2000:]}")
    return json.loads(output[start:])["run_dir"]


# --------------------------------------------------------------------------------------------- images
def write_jpegs(root: Path, rels: list[str], labels: np.ndarray, px: int, seed: int = 0) -> float:
    """One px x px JPEG per relative path: the class's solid colour plus noise. Returns seconds taken."""
    from PIL import Image

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    n_cls = int(labels.max()) + 1
    colours = rng.integers(0, 256, size=(n_cls, 3))
    made: set[Path] = set()
    for rel, y in zip(rels, labels):
        path = root / rel
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        noise = rng.integers(-40, 41, size=(px, px, 3))
        arr = np.clip(colours[int(y)] + noise, 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(path, quality=85)
    return time.perf_counter() - t0


def link(src: Path, dst: Path) -> None:
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    dst.symlink_to(src)


# --------------------------------------------------------------------------------------------- xlsa17
def build_xlsa17(work: Path, ds: str, px: int) -> tuple[Path, Path, list[str], dict[str, Any]]:
    """xlsa17/<DS> (links to the fixtures) + the image tree; returns (root, image_root, mapped paths, info)."""
    root = work / "xlsa17" / ds
    root.mkdir(parents=True, exist_ok=True)
    for f in (SHARED / "xlsa17" / ds).iterdir():
        link(f, root / f.name)
    link(SHARED / "attribute_w2v" / f"{ds}_attribute.pkl", root / f"{ds}_attribute.pkl")
    link(SHARED / "image_lists" / f"{ds}.json.gz", root / "image_list.json.gz")
    with gzip.open(SHARED / "image_lists" / f"{ds}.json.gz", "rt") as fh:
        il = json.load(fh)
    image_root = work / "images" / IMAGE_ROOTS[ds]
    cut = ANCHOR_CUT[ds]
    rels = []
    for s in il["image_files"]:
        s = s.replace("//", "/")
        rels.append(s.split(cut, 1)[1] if cut else s)  # SUN: the stored path starts at images/
    labels = np.asarray(il["labels"])
    marker = image_root / ".complete"
    secs = 0.0
    if not marker.exists():  # the tree is reused between runs of the script
        secs = write_jpegs(image_root, rels, labels, px)
        marker.write_text(str(len(rels)))
    info = {"images": len(rels), "classes": int(labels.max()) + 1, "jpeg_s": round(secs, 1)}
    return root, image_root, [str(image_root / r) for r in rels], info


def tiny_weights(work: Path, widths: list[int]) -> Path:
    """A TinyBackbone state dict (random init) in torchvision-style keys: the file the config's
    model.backbone_weights points at, so the real configs' weights check and loader are exercised."""
    import torch
    from safetensors.torch import save_file

    from unseen.backbones import TinyBackbone

    path = work / "weights" / f"tiny-{'-'.join(map(str, widths))}.safetensors"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        save_file({k: v.contiguous() for k, v in TinyBackbone(widths).state_dict().items()}, str(path))
    return path


def rehearse_xlsa17(rec: Recorder, work: Path, ds: str, args: argparse.Namespace) -> dict[str, Any]:
    root, image_root, paths, info = build_xlsa17(work, ds, args.jpeg_px)
    print(f"{ds}: {info}", flush=True)
    rec.run(
        f"{ds} data check",
        unseen("data", "check", "xlsa17", "--root", str(root), "--image-root", str(image_root)),
    )
    widths = [16, 32, 64]
    weights = tiny_weights(work, widths)
    # the README's form: a config path (configs/ at the repository root) + dotted overrides
    overrides = [
        f"data.root={root}",
        f"data.image_root={image_root}",
        f"model.backbone_weights={weights}",
        # CPU-size overrides only: backbone, image size, epochs / batches, workers, where runs go
        "model.backbone=tiny",
        f"model.tiny_widths=[{','.join(map(str, widths))}]",
        f"model.width={args.width}",
        f"model.model_dim={args.width // 2}",
        f"data.image_size={args.image_size}",
        f"train.epochs={args.epochs}",
        f"train.batches_per_epoch={args.batches}",
        "train.num_workers=0",
        "train.device=cpu",
        f"output_dir={work / 'runs'}",
    ]
    cfg = f"configs/attribute/{CONFIGS[ds]}.yaml"
    row = rec.run(f"{ds} train", unseen("train", cfg, *overrides))
    run = run_dir_of(row["output"])
    # --resume on a finished run must continue from its last epoch (nothing left: it finishes at once)
    rec.run(f"{ds} train --resume", unseen("train", "--resume", run))
    rec.run(f"{ds} eval", unseen("eval", run))
    # predict: an unseen-class image and a seen-class one, as files a user would pass
    rec.run(
        f"{ds} predict",
        unseen("predict", run, paths[0], paths[-1], "--classes", "unseen", "--topk", "5"),
    )
    return {"run": run, **info}


# --------------------------------------------------------------------------------------------- NUS-WIDE
def nus_seen_tags() -> tuple[list[str], list[str]]:
    tags = [t.strip() for t in (SHARED / "nus_wide" / "TagList1k.txt").read_text().splitlines() if t.strip()]
    concepts = [
        c.strip() for c in (SHARED / "nus_wide" / "Concepts81.txt").read_text().splitlines() if c.strip()
    ]
    seen = [t for t in tags if t not in set(concepts)]
    return seen, concepts


def vgg_weights(work: Path) -> Path:
    """VGG-19 ``features`` state dict (random init, torchvision keys): what ``--weights`` points at."""
    import torch

    from unseen.backbones import VGGFeatureExtractor

    path = work / "weights" / "vgg19-features.pth"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        torch.save(VGGFeatureExtractor().state_dict(), path)
    return path


def rehearse_nus(rec: Recorder, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    seen, concepts = nus_seen_tags()
    root = work / "nus_wide"
    img_root = work / "images" / "nus_wide" / "Flickr"
    root.mkdir(parents=True, exist_ok=True)
    for name in ("TagList1k.txt", "Concepts81.txt", "NUS_WIDE_pretrained_w2v_glove-wiki-gigaword-300"):
        link(SHARED / "nus_wide" / name, root / name)
    rng = np.random.default_rng(0)
    n_tr, n_te = args.nus_train, args.nus_test
    info: dict[str, Any] = {"seen": len(seen), "unseen": len(concepts), "train": n_tr, "test": n_te}

    def split(n: int, offset: int) -> tuple[list[str], np.ndarray, np.ndarray]:
        # NUS-WIDE's own naming (Flickr/<concept folder>/<nnnn>_<flickr id>.jpg); ~2% of tags positive
        rels = [f"{concepts[i % len(concepts)]}/{i:04d}_{1000000 + offset + i}.jpg" for i in range(n)]
        ys = np.where(rng.random((n, len(seen))) < 0.02, 1, -1).astype(np.int8)
        yu = np.where(rng.random((n, len(concepts))) < 0.05, 1, -1).astype(np.int8)
        return rels, ys, yu

    tr, ys_tr, _ = split(n_tr, 0)
    te, ys_te, yu_te = split(n_te, n_tr)
    info["jpeg_s"] = round(write_jpegs(img_root, tr + te, rng.integers(0, 81, n_tr + n_te), args.jpeg_px), 1)
    lists = work / "nus_lists"
    lists.mkdir(exist_ok=True)
    (lists / "train.txt").write_text("\n".join(tr) + "\n")
    (lists / "test.txt").write_text("\n".join(te) + "\n")
    np.save(lists / "train_labels.npy", ys_tr)
    np.save(lists / "test_labels.npy", ys_te)
    np.save(lists / "test_unseen.npy", yu_te)
    w = vgg_weights(work)
    common = ["--backbone", "vgg19", "--weights", str(w), "--batch-size", "16", "--overwrite"]
    rec.run(
        "NUS extract train",
        unseen(
            "extract", str(img_root), str(root / "nus_wide_train.h5"), "--list", str(lists / "train.txt"),
            "--labels", str(lists / "train_labels.npy"), *common,
        ),
    )  # fmt: skip
    rec.run(
        "NUS extract test",
        unseen(
            "extract", str(img_root), str(root / "nus_wide_test.h5"), "--list", str(lists / "test.txt"),
            "--labels", str(lists / "test_labels.npy"), "--unseen-labels", str(lists / "test_unseen.npy"),
            *common,
        ),
    )  # fmt: skip
    rec.run("NUS data check", unseen("data", "check", "nus_wide", "--root", str(root)))
    row = rec.run(
        "NUS train",
        unseen(
            "train", "multilabel/epsilon_nus_wide", f"data.root={root}", f"train.epochs={args.nus_epochs}",
            "train.warmup_epochs=0", "train.device=cpu", f"output_dir={work / 'runs'}",
        ),
    )  # fmt: skip
    run = run_dir_of(row["output"])
    rec.run("NUS eval", unseen("eval", run))
    rec.run(
        "NUS predict", unseen("predict", run, str(img_root / te[0]), "--classes", "unseen", "--topk", "5")
    )
    return {"run": run, **info}


# --------------------------------------------------------------------------------------------- report
def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| step | wall s | peak RSS MB | rc |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['step']} | {r['wall_s']:.1f} | {r['peak_rss_mb']:.0f} | {r['rc']} |")
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--work", default="/tmp/rehearsal", help="folder for the replicas and runs (outside the repo)"
    )
    p.add_argument("--datasets", default="CUB,SUN,AWA2", help="xlsa17 datasets, comma-separated ('' = none)")
    p.add_argument("--no-nus", action="store_true", help="skip NUS-WIDE")
    p.add_argument("--jpeg-px", type=int, default=16, help="side of the written JPEGs")
    p.add_argument("--image-size", type=int, default=32, help="Mg-MRN data.image_size override (paper: 448)")
    p.add_argument("--width", type=int, default=128, help="Mg-MRN model.width override (paper: 2048)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batches", type=int, default=2, help="train.batches_per_epoch (paper config: 300)")
    p.add_argument("--nus-train", type=int, default=40)
    p.add_argument("--nus-test", type=int, default=20)
    p.add_argument("--nus-epochs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the steps")
    p.add_argument("--output", help="write the results as JSON here")
    args = p.parse_args(argv)
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED}: the fixture folder is needed")
    work = Path(args.work).resolve()
    if REPO in work.parents or work == REPO:
        raise SystemExit("--work must be outside the repository")
    logs = work / "logs"
    if logs.exists():
        shutil.rmtree(logs)
    logs.mkdir(parents=True)
    rec = Recorder(logs, args.threads)
    where = machine()
    t0 = time.perf_counter()
    out: dict[str, Any] = {"machine": where, "datasets": {}}
    for ds in [d for d in args.datasets.split(",") if d]:
        out["datasets"][ds] = rehearse_xlsa17(rec, work, ds, args)
    if not args.no_nus:
        out["datasets"]["NUS-WIDE"] = rehearse_nus(rec, work, args)
    out["total_s"] = round(time.perf_counter() - t0, 1)
    out["steps"] = [{k: v for k, v in r.items() if k != "output"} for r in rec.rows]
    out["table"] = table(rec.rows)
    print(f"\n{where}; total {out['total_s']} s\n")
    print(json.dumps(out["datasets"], indent=2))
    print(out["table"])
    if args.output:
        Path(args.output).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
