"""Train a tiny run through the Python API, then load the finished run folder and use it.

The run is the packaged attribute demo config (single-level attention baseline) on a very small embedded world
with one epoch: about 10-15 s on a CPU. It goes to a temporary folder, and so do the rendered world and the caches
(``UNSEEN_CACHE``), unless you pass a folder to keep:

    python examples/load_run.py [OUTPUT_DIR]

With a run of your own, start at ``run_dir = ...`` below (``unseen train`` prints the folder).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

if len(sys.argv) > 1:
    work = Path(sys.argv[1])
else:
    work = Path(tempfile.mkdtemp(prefix="unseen-example-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
os.environ.setdefault("UNSEEN_CACHE", str(work / "cache"))  # read when the world is rendered, so set it first

from unseen import runs  # noqa: E402
from unseen.config import load_run_config  # noqa: E402
from unseen.registry import get_task  # noqa: E402

# 1. a tiny run: the same call as `unseen train attribute/demo_attn1 key=value ...`
WORLD = (
    "{seed: 1, n_classes: 10, n_unseen: 3, n_val: 2, images_per_class: 10, image_size: 32, "
    "n_pretrain_classes: 4, pretrain_images_per_class: 10}"
)
results = runs.train(
    "attribute/demo_attn1",
    [
        f"data.world={WORLD}",
        "data.pretrain_backbone=false",  # skip the backbone pretraining (the demo's stand-in for ImageNet)
        "model.tiny_widths=[8,16,16]",
        "model.width=16",
        "model.model_dim=16",
        "train.epochs=1",
        "train.progress=false",
        f"output_dir={work / 'runs'}",
        "name=attn1-tiny",
    ],
)
run_dir = Path(results["run_dir"])
print(
    f"trained: {run_dir} ({', '.join(sorted(p.name for p in run_dir.iterdir() if not p.name.startswith('.')))})"
)

# 2. what the run reports: results.json (metrics, how they were selected, seed, hashes, versions)
saved = json.loads((run_dir / "results.json").read_text())
m = saved["metrics"]
print(
    f"results.json: CZSL top-1 {m['czsl_top1']:.3f}, GZSL H {m['H']:.3f}; selection: {saved['selection']['rule']}"
)

# 3. the saved config and the model, rebuilt from the folder alone (no dataset needed)
cfg = load_run_config(run_dir)
model = get_task(cfg.setting).load_model(run_dir, cfg)
print(f"model: {cfg.model.name}, {sum(p.numel() for p in model.parameters())} parameters, seed {cfg.seed}")

# 4. predictions for image files (here: one image of each of two unseen classes of the embedded world), over the
# unseen classes (or "all", "seen", "name,name,..."); the predictor holds the run's class names
predictor = get_task(cfg.setting).predictor(run_dir)
unseen_names = [n for i, n in enumerate(predictor.names) if i not in set(predictor.seen)]
world = next(Path(os.environ["UNSEEN_CACHE"]).glob("shapes-attribute-*"))
images = [sorted((world / "images" / name).glob("*.png"))[0] for name in unseen_names[:2]]
for item in runs.predict(run_dir, images, classes="unseen", topk=2):
    top = ", ".join(f"{t['class']} ({t['score']:.2f})" for t in item["top"])
    print(f"predict {Path(item['image']).parent.name}: {top}")

# 5. recompute the test metrics from the saved model (what `unseen eval RUN_DIR` prints)
again = runs.evaluate_run(run_dir)
print(f"eval: CZSL top-1 {again['czsl_top1']:.3f} (results.json: {m['czsl_top1']:.3f})")
