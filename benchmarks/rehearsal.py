"""Full-size rehearsal of the README's real-dataset commands, on replicas of the real datasets' folder layouts.

From the real fixture files in ``../shared/data`` it builds, under a work folder outside the repository:

- xlsa17 CUB / SUN / AWA2: ``xlsa17/<DS>/`` with links to the real ``att_splits.mat``, class lists and attribute
  word vectors, the real image list as ``image_list.json.gz``, and one tiny JPEG (solid class colour + noise) at
  every real relative path of ``image_lists/<DS>.json.gz`` under the dataset's own image root (``CUB_200_2011``,
  the SUN folder holding ``images/``, ``Animals_with_Attributes2/JPEGImages``): 11,788 / 14,340 / 37,322 files.
- NUS-WIDE: the real 1,006-label space (``TagList1k.txt``, ``Concepts81.txt``, the GloVe pickle, linked), tiny
  JPEGs for a reduced number of train / test images (the full 161,789 / 107,859 would need hours of CPU
  extraction), ``nus_wide_{train,test}.h5`` written by ``unseen extract`` with a VGG-19 weights file.
- czsl MIT-States / UT-Zappos / C-GQA (no czsl fixture exists: names and pairs are made up, UT-Zappos' names
  are its real ones): ``czsl/<mit-states|ut-zap50k|cgqa>/`` with
  ``compositional-split-natural/{train,val,test}_pairs.txt`` at the real vocabulary and pair counts (seen/unseen
  structure included), ``metadata_compositional-split-natural.t7`` (a ``torch.save``d list of dicts, as czsl's)
  and a JPEG at every metadata path (real image counts by default: 53,753 / 29,126 / 39,298 kept entries); a
  GloVe text file covering the vocabularies; Troika's ``feasibility_<dataset>.pt``.
  CLIP: a random ``unseen-test-clip`` saved as an OpenAI TorchScript ``.pt`` and as an open_clip ``.bin``.
- Open Images V4: the real label files of ``2018_04`` (7,186 seen, 2,594 unseen, the top-400 list, descriptions,
  linked), made-up word vectors for every label, and BiAM-layout feature h5 files written with h5py for a reduced
  number of images (``--oi-train`` in ``--oi-shards`` shards, read through a glob, and ``--oi-test``).

Then it runs, as subprocesses the way a user would, the README's commands with the real configs and only
CPU-size overrides (backbone / CLIP architecture, image size, epochs / batches, workers, output folder):
``unseen data check``, ``unseen extract``, ``unseen train``, ``unseen train --resume``, ``unseen eval``, ``unseen
predict``. For every step it records the wall time, the child's peak RSS (``os.wait4``) and the machine's load
average at its end, and prints a Markdown table. czsl: the whole sequence for ``compositional/refiner_mit_states``
in the closed world (the README's command) and the open world (``data.glove``); every other czsl config
(``{refiner,csp,zeroshot_clip}_{mit_states,ut_zappos,cgqa}``) is trained once (fit + test), in the open world where
``--czsl-open-world`` lists the dataset, and zero-shot CLIP once more with ``data.feasibility``
(``--czsl-feasibility``). Open Images: data check, ``multilabel/epsilon_open_images`` (epochs reduced), eval, and
the ``biam_compat`` block of ``results.json``. ``unseen eval`` must reproduce the metrics ``train`` reported.

Weights: the real configs refuse a backbone without weights. Instead of ``model.allow_random_init=true`` the
rehearsal saves a randomly initialised state dict of the overriding architecture (TinyBackbone for Mg-MRN,
VGG-19 ``features`` for extraction) and passes it as ``model.backbone_weights`` / ``--weights``, so that the
weights-loading path a real user takes is exercised too.

    python benchmarks/rehearsal.py                                   # everything
    python benchmarks/rehearsal.py --datasets CUB --no-nus --no-czsl --no-oi     # the CUB slow test
    python benchmarks/rehearsal.py --datasets '' --no-nus --no-oi --czsl-image-scale 0   # czsl, 1 image per pair
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
from dataclasses import dataclass
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
            proc = subprocess.Popen(
                argv, cwd=cwd, env=self.env, stdout=fh, stderr=subprocess.STDOUT, preexec_fn=_oom_first
            )
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
            "load1": round(os.getloadavg()[0], 2),  # the machine's 1-min load average as the step ended
            "log": str(log),
        }
        self.rows.append(row)
        print(f"[{name}] rc={proc.returncode} {wall:.1f}s {row['peak_rss_mb']:.0f} MB", flush=True)
        if check and proc.returncode != 0:
            raise RuntimeError(f"step '{name}' failed (rc {proc.returncode}); log {log}:\n{out[-3000:]}")
        row["output"] = out
        return row


def _oom_first() -> None:
    """In the child: be the first process the kernel's OOM killer ends (a step at real size can take many GB on a
    machine shared with other jobs; raising one's own score needs no privilege)."""
    try:
        Path("/proc/self/oom_score_adj").write_text("1000")
    except OSError:
        pass


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
    # the README's --resume command on a finished run: nothing to do, the recorded results come back (a killed
    # run's resume is tested in tests/test_attribute_run.py and tests/test_run_safety.py)
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


# --------------------------------------------------------------------------------------------- czsl
@dataclass(frozen=True)
class CZSLSpec:
    """A czsl benchmark's real sizes (design spec compositional-zsl.md section 4.1; written down here, not taken
    from the reader's own table, so that a wrong count on either side shows up in ``unseen data check czsl``)."""

    folder: str  # the folder name czsl's scripts give the dataset (the reader asserts known counts by it)
    key: str  # config suffix: compositional/<method>_<key>
    attrs: int
    objs: int
    train_pairs: int
    val_pairs: tuple[int, int]  # seen / unseen
    test_pairs: tuple[int, int]
    images: tuple[int, int, int]  # train / val / test
    legacy_t7: bool  # metadata written in torch's pre-1.6 (non-zip) format, as files from 2019 are


CZSL = {
    "mit-states": CZSLSpec("mit-states", "mit_states", 115, 245, 1262, (300, 300), (400, 400),
                           (30338, 10420, 12995), True),
    "ut-zappos": CZSLSpec("ut-zap50k", "ut_zappos", 16, 12, 83, (15, 15), (18, 18), (22998, 3214, 2914), True),
    "cgqa": CZSLSpec("cgqa", "cgqa", 413, 674, 5592, (1252, 1040), (888, 923), (26920, 7280, 5098), False),
}  # fmt: skip
# UT-Zappos' real vocabulary as czsl spells it (recalled): the dotted names exercise the GloVe remap
UT_ATTRS = (
    "Canvas", "Cotton", "Faux.Fur", "Faux.Leather", "Full.grain.leather", "Hair.Calf", "Leather", "Nubuck",
    "Nylon", "Patent.Leather", "Rubber", "Satin", "Sheepskin", "Suede", "Synthetic", "Wool",
)  # fmt: skip
UT_OBJS = (
    "Boots.Ankle", "Boots.Knee.High", "Boots.Mid-Calf", "Sandals", "Shoes.Boat.Shoes", "Shoes.Clogs.and.Mules",
    "Shoes.Flats", "Shoes.Heels", "Shoes.Loafers", "Shoes.Oxfords", "Shoes.Sneakers.and.Athletic.Shoes",
    "Slippers",
)  # fmt: skip
SPLIT = "compositional-split-natural"
CLIP_ARCH = "unseen-test-clip"  # the smallest packaged open_clip architecture (ViT/8 at 32 px, 2 + 2 blocks)
CZSL_METHODS = ("refiner", "csp", "zeroshot_clip")


def _words(rng: np.random.Generator, n: int, taken: set[str], multi: float = 0.0) -> list[str]:
    """n new lower-case made-up words (consonant-vowel syllables); a fraction ``multi`` are two words joined by
    ``_`` as czsl writes multi-word names (``traffic_light``)."""
    cons, vows = "bcdfghklmnprstvz", "aeiou"

    def word() -> str:
        return "".join(cons[rng.integers(16)] + vows[rng.integers(5)] for _ in range(int(rng.integers(2, 4))))

    out: list[str] = []
    while len(out) < n:
        w = word() + (f"_{word()}" if rng.random() < multi else "")
        if w not in taken:
            taken.add(w)
            out.append(w)
    return out


def _spread(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """n images over k pairs, every pair at least one, the rest long-tailed."""
    if n < k:
        raise ValueError(f"{n} images cannot cover {k} pairs")
    w = rng.gamma(0.7, size=k)
    return 1 + rng.multinomial(n - k, w / w.sum())


def _czsl_pairs(
    rng: np.random.Generator, spec: CZSLSpec
) -> tuple[list[tuple[int, int]], list[tuple[int, int]], list[tuple[int, int]]]:
    """(train, val, test) pair lists (attr_idx, obj_idx) in file order: every state and object in some train pair;
    val/test seen pairs are train pairs, val/test unseen pairs are disjoint from train and from each other."""
    a_n, o_n = spec.attrs, spec.objs
    pa, po = rng.permutation(a_n), rng.permutation(o_n)
    cover = [(int(pa[i % a_n]), int(po[i % o_n])) for i in range(max(a_n, o_n))]
    taken = set(cover)
    rest = [p for p in (divmod(int(k), o_n) for k in rng.permutation(a_n * o_n)) if p not in taken]
    n_fill = spec.train_pairs - len(cover)
    train = cover + rest[:n_fill]
    rest = rest[n_fill:]
    (vs, vu), (ts, tu) = spec.val_pairs, spec.test_pairs
    val_unseen, test_unseen = rest[:vu], rest[vu : vu + tu]
    order = rng.permutation(len(train))
    train = [train[i] for i in order]
    val = [train[i] for i in rng.choice(len(train), vs, replace=False)] + val_unseen
    test = [train[i] for i in rng.choice(len(train), ts, replace=False)] + test_unseen
    return train, [val[i] for i in rng.permutation(len(val))], [test[i] for i in rng.permutation(len(test))]


def _ut_source_path(obj: str, rng: np.random.Generator, i: int) -> str:
    """UT-Zap50K's original path (the metadata's ``_image``): category/subcategory/brand/<id>.<n>.jpg."""
    cat, _, sub = obj.partition(".")
    return (
        f"{cat}/{sub.replace('.', ' ') or cat}/Brand{int(rng.integers(40)):02d}/{7000000 + i}.{i % 9973}.jpg"
    )


def build_czsl(work: Path, ds: str, px: int, image_scale: float = 1.0, seed: int = 0) -> dict[str, Any]:
    """A czsl folder (``<work>/czsl/<folder>``) at the real vocabulary, pair and (scaled) image counts.

    Vocabulary names are made up (UT-Zappos: its real names); pair lists are drawn at random with the real
    seen/unseen structure; one px x px JPEG at every metadata path; the metadata a ``torch.save``d list of dicts
    {image, attr, obj, set} (UT-Zappos also ``_image``). MIT-States also gets entries the readers skip (attr 'NA',
    set 'NA': 1% each, a made-up share). ``image_scale`` < 1 scales the image counts (every pair keeps one)."""
    import torch

    spec = CZSL[ds]
    rng = np.random.default_rng(seed)
    root = work / "czsl" / spec.folder
    if ds == "ut-zappos":
        attrs, objs = list(UT_ATTRS), list(UT_OBJS)
    else:
        taken: set[str] = set()
        attrs = _words(rng, spec.attrs, taken)
        objs = _words(rng, spec.objs, taken, multi=0.1)
    train, val, test = _czsl_pairs(rng, spec)
    split_dir = root / SPLIT
    split_dir.mkdir(parents=True, exist_ok=True)
    for name, pairs in (("train", train), ("val", val), ("test", test)):
        (split_dir / f"{name}_pairs.txt").write_text("".join(f"{attrs[a]} {objs[o]}\n" for a, o in pairs))

    entries: list[dict[str, str]] = []
    colours: list[int] = []
    counter = 0

    def add(a: int | None, o: int, settype: str, n: int) -> None:
        nonlocal counter
        attr = attrs[a] if a is not None else "NA"
        for _ in range(n):
            counter += 1
            if ds == "cgqa":  # flat image folder (names made up)
                e = {"image": f"{2300000 + counter}.jpg"}
            elif ds == "ut-zappos":
                src = _ut_source_path(objs[o], rng, counter)
                e = {"image": f"{attr}_{objs[o]}/{Path(src).name}", "_image": src}
            else:  # MIT-States: "<adj> <noun>" folders with spaces made "_" by czsl's download script
                e = {"image": f"{attr if a is not None else 'adj'}_{objs[o]}/image_{counter:06d}.jpg"}
            entries.append({**e, "attr": attr, "obj": objs[o], "set": settype})
            colours.append((a if a is not None else 0) * spec.objs + o)

    for settype, pairs, n_img in (
        ("train", train, spec.images[0]),
        ("val", val, spec.images[1]),
        ("test", test, spec.images[2]),
    ):
        n = max(len(pairs), int(round(n_img * image_scale)))
        for (a, o), k in zip(pairs, _spread(rng, n, len(pairs))):
            add(a, o, settype, int(k))
    n_kept = len(entries)
    if ds == "mit-states":
        n_na = max(1, n_kept // 100)
        for o in rng.integers(spec.objs, size=n_na):
            add(None, int(o), "NA", 1)  # images without a state annotation
        for i in rng.integers(len(train), size=n_na):
            add(*train[int(i)], "NA", 1)  # annotated, but in no set of this split
    order = sorted(range(len(entries)), key=lambda i: entries[i]["image"])  # a directory walk's order
    entries = [entries[i] for i in order]
    meta = root / f"metadata_{SPLIT}.t7"
    torch.save(entries, meta, _use_new_zipfile_serialization=not spec.legacy_t7)
    marker = root / "images" / ".complete"
    jpeg_s = 0.0
    if not marker.exists() or marker.read_text() != str(len(entries)):
        if (root / "images").exists():
            shutil.rmtree(root / "images")
        jpeg_s = write_jpegs(root / "images", [e["image"] for e in entries], np.asarray(colours)[order], px)
        marker.write_text(str(len(entries)))
    first = {s: next(e["image"] for e in entries if e["set"] == s) for s in ("train", "val", "test")}
    unseen_test = set(test) - set(train)
    test_unseen_image = next(
        e["image"]
        for e in entries
        if e["set"] == "test" and (attrs.index(e["attr"]), objs.index(e["obj"])) in unseen_test
    )
    return {
        "root": str(root),
        "attrs": len(attrs),
        "objs": len(objs),
        "pairs": {"train": len(train), "val": len(val), "test": len(test)},
        "images": {s: sum(e["set"] == s for e in entries) for s in ("train", "val", "test")},
        "skipped_entries": len(entries) - n_kept,
        "jpeg_s": round(jpeg_s, 1),
        "predict_images": [str(root / "images" / test_unseen_image), str(root / "images" / first["train"])],
        "names": attrs + objs,
    }


def glove_file(work: Path, names: list[str], dim: int = 300, seed: int = 0) -> Path:
    """A GloVe text file (``word v1 ... v300``) holding every word the vocabularies' names are made of, the words
    the UT-Zappos / C-GQA remap looks up instead (real English words a real GloVe file has), and some filler."""
    from unseen.compositional.data import GLOVE_REMAP

    rng = np.random.default_rng(seed)
    words: dict[str, None] = {}
    for text in [*names, *GLOVE_REMAP.values()]:
        for w in text.lower().replace(".", "_").replace("-", "_").split("_"):
            if w:
                words[w] = None
    words.update(dict.fromkeys(_words(rng, 500, set(words))))  # filler, as a real file has 400k words
    path = work / "glove" / "glove.6B.300d.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    vec = rng.normal(0, 0.4, size=(len(words), dim))
    with open(path, "w") as fh:
        for w, v in zip(words, vec):
            fh.write(w + " " + " ".join(f"{x:.5f}" for x in v) + "\n")
    return path


def openai_fp16(key: str) -> bool:
    """Whether OpenAI's files store this CLIP tensor in fp16 (their convert_weights: conv, linear and attention
    weights and the projections; layer norms, embeddings and the logit scale stay fp32)."""
    fp32 = ("ln_", "class_embedding", "positional_embedding", "token_embedding", "logit_scale")
    return not any(part.startswith(fp32) for part in key.split("."))


def clip_weights(work: Path, layout: str) -> Path:
    """A randomly initialised ``unseen-test-clip`` saved the way real CLIP weights come: ``openai`` = a TorchScript
    archive laid out as OpenAI's ``ViT-L-14.pt`` (OpenAI names and dtypes, the ``input_resolution`` /
    ``context_length`` / ``vocab_size`` entries, a non-state ``attn_mask``); ``open_clip`` = a ``torch.save``d
    state dict as open_clip's ``open_clip_pytorch_model.bin``. The configs' ``model.clip_weights`` points at it."""
    import warnings

    import torch
    from torch import nn

    from unseen.compositional.clip import create_clip

    path = (
        work / "weights" / (f"{CLIP_ARCH}-openai.pt" if layout == "openai" else f"{CLIP_ARCH}-open_clip.bin")
    )
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    state = create_clip(CLIP_ARCH).state_dict()
    if layout != "openai":
        torch.save(state, path)
        return path

    class Node(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    root = Node()
    for key, value in state.items():
        *parents, leaf = key.split(".")
        mod = root
        for name in parents:
            if not hasattr(mod, name):
                mod.add_module(name, Node())
            mod = getattr(mod, name)
        half = openai_fp16(key)
        mod.register_parameter(
            leaf, nn.Parameter(value.half() if half else value.clone(), requires_grad=False)
        )
    for key, value in {"input_resolution": 32, "context_length": 16, "vocab_size": 49408}.items():
        root.register_buffer(key, torch.tensor(value))
    root.transformer.attn_mask = torch.full((16, 16), float("-inf")).triu(1)  # type: ignore[union-attr]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated; OpenAI's files are such archives
        torch.jit.save(torch.jit.script(root), str(path))
    return path


def feasibility_file(root: Path, seed: int = 0) -> Path:
    """``feasibility_<dataset>.pt`` as Troika ships it: ``{'feasibility': float32 tensor (|A|*|O|,)}`` over the
    open-world pairs in czsl's order (attrs and objs sorted over the three pair files, index attr * |O| + obj),
    0 for the train pairs; the other values are made up in the range of Troika's MIT-States file."""
    import torch

    listed = [
        tuple(line.split())
        for s in ("train", "val", "test")
        for line in (root / SPLIT / f"{s}_pairs.txt").read_text().splitlines()
        if line.strip()
    ]
    attrs, objs = sorted({a for a, _ in listed}), sorted({o for _, o in listed})
    f = np.random.default_rng(seed).uniform(-0.045, 0.718, len(attrs) * len(objs)).astype(np.float32)
    for a, o in (tuple(line.split()) for line in (root / SPLIT / "train_pairs.txt").read_text().splitlines()):
        f[attrs.index(a) * len(objs) + objs.index(o)] = 0.0
    path = root.parent / f"feasibility_{root.name}.pt"
    torch.save({"feasibility": torch.from_numpy(f)}, path)
    return path


def czsl_overrides(
    method: str, root: str, weights: Path, work: Path, args: argparse.Namespace, open_world: list[str]
) -> list[str]:
    """The README's overrides (data.root, model.clip_weights[, data.glove or data.feasibility]) + CPU-size ones."""
    ov = [f"data.root={root}", f"model.clip_weights={weights}", *open_world]
    ov += [f"model.clip_arch={CLIP_ARCH}"]  # CPU size: the config's ViT-L-14-quickgelu -> 32 px, 2 blocks
    if method == "refiner":
        ov.append(
            "model.refine_blocks=2"
        )  # the config refines the last 8 of ViT-L's 24 blocks; this CLIP has 2
    if method != "zeroshot_clip":  # zero-shot CLIP trains nothing (epochs 0 in its config)
        ov += [f"train.epochs={args.czsl_epochs}", f"train.batches_per_epoch={args.czsl_batches}"]
    return ov + ["train.num_workers=0", "train.device=cpu", f"output_dir={work / 'runs'}"]


def _last_json(output: str) -> dict[str, Any]:
    """The JSON object a command printed last (``json.dumps(indent=2)``: only its own braces are in column 0)."""
    start = output.rfind("\n{\n") + 1 if not output.startswith("{\n") else 0
    return json.loads(output[start:])


def _check_eval(trained: dict[str, Any], evaluated: dict[str, Any], what: str) -> None:
    """``unseen eval`` must reproduce the metrics the training run reported."""
    diff = {
        k: (v, evaluated.get(k))
        for k, v in trained.items()
        if isinstance(v, float) and not (evaluated.get(k) == v or abs(evaluated.get(k, np.inf) - v) <= 1e-6)
    }
    if diff:
        raise RuntimeError(f"{what}: eval differs from the training run's metrics: {diff}")


def rehearse_czsl(rec: Recorder, work: Path, ds: str, args: argparse.Namespace) -> dict[str, Any]:
    spec = CZSL[ds]
    info = build_czsl(work, ds, args.jpeg_px, args.czsl_image_scale)
    names = info.pop("names")
    tag = {"mit-states": "MIT", "ut-zappos": "UT", "cgqa": "CGQA"}[ds]
    print(f"{ds}: {info}", flush=True)
    root = info["root"]
    row = rec.run(f"{tag} data check", unseen("data", "check", "czsl", "--root", root))
    info["check"] = row["output"].strip().splitlines()
    glove = glove_file(work, names)
    openai, open_clip = clip_weights(work, "openai"), clip_weights(work, "open_clip")
    runs: dict[str, Any] = {}
    worlds = ["closed", "open"] if ds in args.czsl_open_world.split(",") else ["closed"]
    for method in [m for m in args.czsl_methods.split(",") if m]:
        if method not in CZSL_METHODS:
            raise SystemExit(f"--czsl-methods: {method!r} is not one of {CZSL_METHODS}")
        weights = open_clip if method == "csp" else openai  # both layouts users hold
        # the whole README sequence for Refiner-R on MIT-States in each world; the other configs are loaded and
        # run once (train = fit + test), in the open world where it is rehearsed (the closed world is tested too)
        full = method == "refiner" and ds == "mit-states"
        for world in worlds if full else worlds[-1:]:
            name = f"{tag} {method}" + (" OW" if world == "open" else "")
            ov = czsl_overrides(
                method, root, weights, work, args, [f"data.glove={glove}"] if world == "open" else []
            )
            row = rec.run(f"{name} train", unseen("train", f"compositional/{method}_{spec.key}", *ov))
            run = run_dir_of(row["output"])
            trained = _last_json(row["output"])["metrics"]
            runs[name] = {"run": run, "metrics": trained}
            if world == "open" and "ow/AUC" not in trained:
                raise RuntimeError(f"{name}: data.glove given but no open-world metrics: {sorted(trained)}")
            if not full:
                continue
            rec.run(f"{name} train --resume", unseen("train", "--resume", run))
            ev = rec.run(f"{name} eval", unseen("eval", run))
            _check_eval(trained, _last_json(ev["output"]), f"{name} eval")
            pred = rec.run(
                f"{name} predict",
                unseen("predict", run, *info["predict_images"], "--classes", "unseen", "--topk", "5"),
            )
            runs[name]["predict"] = pred["output"].strip().splitlines()
    if ds in args.czsl_feasibility.split(","):  # the other open-world source: a feasibility file
        name = f"{tag} zeroshot_clip OW feasibility"
        ov = [f"data.feasibility={feasibility_file(Path(root))}"]
        ov = czsl_overrides("zeroshot_clip", root, openai, work, args, ov)
        row = rec.run(f"{name} train", unseen("train", f"compositional/zeroshot_clip_{spec.key}", *ov))
        trained = _last_json(row["output"])["metrics"]
        runs[name] = {"run": run_dir_of(row["output"]), "metrics": trained}
        if "ow/AUC" not in trained:
            raise RuntimeError(f"{name}: data.feasibility given but no open-world metrics: {sorted(trained)}")
    return {**info, "runs": runs}


# --------------------------------------------------------------------------------------------- Open Images
def _oi_ids(path: Path) -> list[str]:
    return [t.strip() for t in path.read_text(encoding="utf-8-sig").splitlines() if t.strip()]


def build_open_images(
    work: Path,
    n_train: int,
    n_shards: int,
    n_test: int,
    feature_shape: tuple[int, int] = (512, 196),
    seed: int = 0,
) -> dict[str, Any]:
    """Open Images V4 as BiAM's code reads it: the real label files of ``2018_04`` (linked), made-up word vectors
    for every label ([seen (7186, 300), unseen (2594, 300)] pickled), and BiAM-layout feature files written here
    with h5py (not the package's writer): per image ``<id>-features`` float32 (512, 196), ``<id>-seenlabels`` int8
    (7186) and ``<id>-unseenlabels`` int8 (2594), values in {1, -1, 0}; the training images in ``n_shards``
    shards, the test images in one file. Image ids: 16 hex digits, as Open Images' ImageIDs."""
    import pickle

    import h5py

    rng = np.random.default_rng(seed)
    base = work / "open_images"
    root = base / "2018_04"
    root.mkdir(parents=True, exist_ok=True)
    for name in (
        "classes-trainable.txt",
        "unseen_labels.pkl",
        "top_400_unseen.csv",
        "class-descriptions.csv",
    ):
        link(SHARED / "open_images" / name, root / name)
    seen = _oi_ids(SHARED / "open_images" / "classes-trainable.txt")
    unseen = _oi_ids(SHARED / "open_images" / "unseen_labels.txt")
    top = np.asarray([int(t.split(",")[0]) for t in _oi_ids(SHARED / "open_images" / "top_400_unseen.csv")])
    vectors = base / "open_images_glove.pkl"
    with open(vectors, "wb") as fh:  # the layout of the NUS-WIDE GloVe pickle: a list of two float32 arrays
        pickle.dump([rng.normal(size=(len(seen), 300)).astype(np.float32),
                     rng.normal(size=(len(unseen), 300)).astype(np.float32)], fh)  # fmt: skip
    ns, nu = len(seen), len(unseen)

    # long-tailed label frequencies (Zipf over a random order), as Open Images': frequent labels get both verified
    # positives and verified negatives across images, so that their AP is not trivially 1
    def zipf(n: int) -> np.ndarray:
        w = 1.0 / (10.0 + rng.permutation(n))
        return w / w.sum()

    p_seen, p_top = zipf(ns), zipf(len(top))

    def labels(n_pos: int, unseen_pos: int) -> tuple[np.ndarray, np.ndarray]:
        ys, yu = np.zeros(ns, np.int8), np.zeros(nu, np.int8)  # 0 = not verified (most labels of an image)
        idx = rng.choice(ns, n_pos + int(rng.integers(2, 10)), replace=False, p=p_seen)
        ys[idx[:n_pos]], ys[idx[n_pos:]] = 1, -1  # verified present / verified absent
        if unseen_pos:  # positives and negatives among the 400 evaluated unseen labels, a few outside them
            ju = top[rng.choice(len(top), unseen_pos + int(rng.integers(1, 6)), replace=False, p=p_top)]
            yu[ju[:unseen_pos]], yu[ju[unseen_pos:]] = 1, -1
            other = np.setdiff1d(np.arange(nu), top)
            yu[rng.choice(other, 2, replace=False)] = rng.choice(np.array([1, -1], np.int8), 2)
        return ys, yu

    def write(path: Path, rows: range, test: bool) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(path, "w") as f:
            for i in rows:
                name = f"{rng.integers(1 << 62):016x}"
                # BiAM's training filter is exercised: every 25th image without a positive, every 40th with 45
                n_pos = 0 if i % 25 == 3 else 45 if i % 40 == 7 else int(rng.integers(1, 13))
                ys, yu = labels(max(n_pos, 1) if test else n_pos, int(rng.integers(1, 4)) if test else 0)
                x = np.maximum(rng.standard_normal(feature_shape, dtype=np.float32), 0)  # post-ReLU conv5_4
                f.create_dataset(f"{name}-features", data=x)
                f.create_dataset(f"{name}-seenlabels", data=ys)
                f.create_dataset(f"{name}-unseenlabels", data=yu)

    t0 = time.perf_counter()
    bounds = np.linspace(0, n_train, n_shards + 1).astype(int)
    shards = base / "train_features"
    if shards.exists():
        shutil.rmtree(shards)
    for k in range(n_shards):
        write(shards / f"OI_train_features_{k}.h5", range(int(bounds[k]), int(bounds[k + 1])), False)
    test_h5 = base / "OI_test_features.h5"
    write(test_h5, range(n_test), True)
    return {
        "root": str(root),
        "vectors": str(vectors),
        "train_h5": str(shards / "*.h5"),
        "test_h5": str(test_h5),
        "seen": ns,
        "unseen_source": nu,
        "unseen_evaluated": len(top),
        "train": n_train,
        "shards": n_shards,
        "test": n_test,
        "h5_s": round(time.perf_counter() - t0, 1),
    }


def rehearse_oi(rec: Recorder, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    info = build_open_images(work, args.oi_train, args.oi_shards, args.oi_test)
    print(f"Open Images: {info}", flush=True)
    row = rec.run("OI data check", unseen("data", "check", "open_images", "--root", info["root"]))
    info["check"] = row["output"].strip().splitlines()
    row = rec.run(
        "OI train",
        unseen(
            "train", "multilabel/epsilon_open_images", f"data.root={info['root']}",
            f"data.vectors={info['vectors']}",
            f"data.train_h5={info['train_h5']}", f"data.test_h5={info['test_h5']}",
            # CPU size: epochs only (the config's 10; warm-up 1 of 1 epoch would leave no full-lr epoch)
            f"train.epochs={args.oi_epochs}", "train.warmup_epochs=0", "train.device=cpu",
            f"output_dir={work / 'runs'}",
        ),
    )  # fmt: skip
    run = run_dir_of(row["output"])
    trained = _last_json(row["output"])["metrics"]
    ev = rec.run("OI eval", unseen("eval", run))
    _check_eval(trained, _last_json(ev["output"]), "OI eval")
    results = json.loads((Path(run) / "results.json").read_text())
    if "biam_compat" not in results:
        raise RuntimeError(f"{run}/results.json has no biam_compat block (keys {sorted(results)})")
    return {**info, "run": run, "metrics": trained, "biam_compat": results["biam_compat"]}


# --------------------------------------------------------------------------------------------- report
def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| step | wall s | peak RSS MB | load at end | rc |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['step']} | {r['wall_s']:.1f} | {r['peak_rss_mb']:.0f} | {r.get('load1', '')} | {r['rc']} |"
        )
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
    p.add_argument("--no-czsl", action="store_true", help="skip the compositional (czsl) datasets")
    p.add_argument(
        "--czsl-datasets", default="mit-states,ut-zappos,cgqa", help="czsl replicas, comma-separated"
    )
    p.add_argument(
        "--czsl-open-world",
        default="mit-states,ut-zappos",
        help="czsl datasets also run in the open world (data.glove); C-GQA's has 278,362 pairs",
    )
    p.add_argument(
        "--czsl-image-scale",
        type=float,
        default=1.0,
        help="scale of the czsl image counts (1 = real; 0 = one image per pair)",
    )
    p.add_argument(
        "--czsl-feasibility",
        default="ut-zappos",
        help="czsl datasets where zero-shot CLIP also runs with data.feasibility (Troika's file format)",
    )
    p.add_argument("--czsl-methods", default=",".join(CZSL_METHODS), help="czsl configs run, comma-separated")
    p.add_argument("--czsl-epochs", type=int, default=1)
    p.add_argument("--czsl-batches", type=int, default=2, help="train.batches_per_epoch of the czsl runs")
    p.add_argument("--no-oi", action="store_true", help="skip Open Images")
    p.add_argument(
        "--oi-train", type=int, default=400, help="training images (real: 1.7M), in --oi-shards files"
    )
    p.add_argument("--oi-shards", type=int, default=2)
    p.add_argument("--oi-test", type=int, default=200, help="test images (real: 125,456)")
    p.add_argument("--oi-epochs", type=int, default=1)
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
    if not args.no_czsl:
        for ds in [d for d in args.czsl_datasets.split(",") if d]:
            if ds not in CZSL:
                raise SystemExit(f"--czsl-datasets: {ds!r} is not one of {sorted(CZSL)}")
            out["datasets"][ds] = rehearse_czsl(rec, work, ds, args)
    if not args.no_oi:
        out["datasets"]["Open Images"] = rehearse_oi(rec, work, args)
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
