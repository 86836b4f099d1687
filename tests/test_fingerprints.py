"""Reproducibility records: pinned fingerprints of small worlds, world.json's record, the reuse check, versions().

The pins detect a change of render stack (Pillow above all: its polygon rasteriser has changed between releases)
or of world code that would otherwise silently change every demo table.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import PIL
import pytest
from PIL import Image

from unseen import io as uio
from unseen.shapes.attribute_world import AttributeWorldConfig, export_attribute_world
from unseen.shapes.common import (
    content_files,
    load_world_meta,
    pixel_fingerprint,
    verify_world,
    world_fingerprint,
    world_record,
)
from unseen.shapes.compositional_world import CompositionalWorldConfig, export_compositional_world
from unseen.shapes.multilabel_world import MultilabelWorldConfig, export_multilabel_world

#: Small worlds at the default image sizes and render settings (about a second each on one core).
PINNED_WORLDS = {
    "attribute": (
        export_attribute_world,
        AttributeWorldConfig(
            seed=0,
            n_classes=10,
            n_unseen=2,
            n_val=2,
            images_per_class=3,
            n_pretrain_classes=2,
            pretrain_images_per_class=1,
        ),
        {},
    ),
    "multilabel": (
        export_multilabel_world,
        MultilabelWorldConfig(
            seed=0, n_colours=4, n_shapes=4, n_categories=12, n_unseen=3, n_train=8, n_test=4
        ),
        {"workers": 1},
    ),
    "compositional": (
        export_compositional_world,
        CompositionalWorldConfig(
            seed=0,
            n_states=6,
            n_objects=8,
            n_val_unseen=3,
            n_test_unseen=3,
            n_val_seen=2,
            n_test_seen=2,
            train_images=1,
            val_images=1,
            test_images=1,
            pretrain_images=1,
            n_na_images=2,
        ),
        {},
    ),
}
#: setting -> (content fingerprint: every file's bytes, pixel fingerprint: the decoded PNG pixels).
PINS = {
    "attribute": (
        "ba9ed1b38ca545db07a8701f88297856d40a40051cd1b9813056c2a8c210a305",
        "95443b8592adf912c3dbb370080f59b144ea7626bdafe4b6bc938f8d57e73663",
    ),
    "multilabel": (
        "2183e4a71519c34a3472214a2839073a035cd18170bca3d98b7db7ec1323eb0c",
        "14fc273c126fc4feaeaa7eda4db3a86c00719602962ac23a4e15ef681ca81559",
    ),
    "compositional": (
        "77ef912f3ea349a1ded2a498c4486e8c06e20248196deff6e14fb6cbf4b2d67d",
        "a7bd0bd6d58c0adf10adbfe0d6f7d8bfe6ce1de3c43ae155db0ea3fe9b3669bc",
    ),
}
#: The stack that made the pins, and the Pillow releases checked to draw the same pixels (9.3-11.1 do not).
PINNED_WITH = "Pillow 13.0.0, numpy 2.4.6, scipy 1.17.1, torch 2.14.1, Python 3.11.7"
PILLOW_SAME_PIXELS = "11.2.1 to 13.0.0"


@pytest.fixture(scope="module")
def worlds(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("pinned")
    return {name: export(base / name, cfg, **kw) for name, (export, cfg, kw) in PINNED_WORLDS.items()}


@pytest.mark.parametrize("setting", list(PINNED_WORLDS))
def test_pinned_world_fingerprints(worlds, setting):
    root = worlds[setting]
    meta = load_world_meta(root)
    assert meta["versions"]["Pillow"] == PIL.__version__ and meta["versions"]["numpy"] == np.__version__
    # the recorded fingerprints cover every file the world holds
    files = content_files(root)
    assert meta["fingerprint"] == world_fingerprint(root, files)
    assert meta["pixel_fingerprint"] == pixel_fingerprint(root, files)
    content, pixels = PINS[setting]
    got = f"got ({meta['fingerprint']!r}, {meta['pixel_fingerprint']!r})"
    installed = f"installed: Pillow {PIL.__version__}, numpy {np.__version__}"
    assert meta["pixel_fingerprint"] == pixels, (
        f"the pixels of the pinned {setting} world changed ({got}; pinned with {PINNED_WITH}; {installed}). "
        f"Pillow {PILLOW_SAME_PIXELS} draw the pinned pixels; other releases rasterise polygons differently and "
        "move every demo table: install one of those. If the rendering or world code changed on purpose, "
        "bump the world's WORLD_VERSION (cached worlds are then not taken for new ones), re-measure the demo "
        "tables and re-pin here."
    )
    assert meta["fingerprint"] == content, (
        f"the pinned {setting} world has the pinned pixels but other file bytes changed ({got}; pinned with "
        f"{PINNED_WITH}; {installed}): a non-image file (scipy .mat, numpy .npy/.npz/pickle, torch .t7, text or "
        "json written by the world code) or the PNG encoding. Known case: numpy 1.x pickles arrays as numpy.core, "
        "2.x as numpy._core (the multi-label GloVe pickle). Find the file by comparing with a world built by the "
        "pinning stack; if the change is intended, re-pin here."
    )


def _copy(root: Path, tmp_path: Path) -> Path:
    out = tmp_path / root.name
    shutil.copytree(root, out)
    return out


def test_pixel_fingerprint_ignores_the_png_encoding_content_fingerprint_does_not(worlds, tmp_path):
    root = _copy(worlds["attribute"], tmp_path)
    meta = load_world_meta(root)
    png = next(f for f in meta["files"] if f.endswith(".png"))
    with Image.open(root / png) as im:
        im.load()
        im.save(root / png, format="PNG", compress_level=1)  # same pixels, other bytes
    with pytest.raises(ValueError, match="files were modified"):
        verify_world(root)
    assert pixel_fingerprint(root, meta["files"]) == meta["pixel_fingerprint"]
    with Image.open(root / png) as im:
        arr = np.asarray(im.convert("RGB")).copy()
    arr[0, 0] ^= 1  # one channel of one pixel
    Image.fromarray(arr).save(root / png, format="PNG")
    assert pixel_fingerprint(root, meta["files"]) != meta["pixel_fingerprint"]


def test_world_record_refuses_unlisted_or_missing_files(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "sub" / "b.txt").write_text("b")
    (tmp_path / "world.json").write_text("{}")  # never part of the fingerprint
    rec = world_record(tmp_path, ["sub/b.txt", "a.txt"])
    assert rec["fingerprint"] == world_fingerprint(tmp_path, ["a.txt", "sub/b.txt"])
    assert rec["versions"]["Pillow"] == PIL.__version__
    with pytest.raises(AssertionError, match=r"files not listed \['sub/b.txt'\]"):
        world_record(tmp_path, ["a.txt"])
    with pytest.raises(AssertionError, match=r"listed but missing \['c.txt'\]"):
        world_record(tmp_path, ["a.txt", "sub/b.txt", "c.txt"])


def _reuse(root: Path, caplog) -> list[logging.LogRecord]:
    export, cfg, kw = PINNED_WORLDS["attribute"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="unseen"):
        assert export(root, cfg, **kw) == root
    return [r for r in caplog.records if "Pillow" in r.getMessage()]


def _set_meta(root: Path, **changes) -> None:
    meta = load_world_meta(root)
    meta.update(changes)
    (root / "world.json").write_text(json.dumps(meta), encoding="utf-8")


def test_reused_world_checked_against_the_installed_pillow(worlds, tmp_path, caplog):
    root = _copy(worlds["attribute"], tmp_path)
    assert _reuse(root, caplog) == []  # rendered by this very Pillow: nothing to say, nothing re-drawn

    versions = load_world_meta(root)["versions"]
    _set_meta(root, versions={**versions, "Pillow": "0.0.1"})
    (rec,) = _reuse(root, caplog)
    assert rec.levelno == logging.WARNING
    assert (
        "rendered with Pillow 0.0.1" in rec.getMessage()
        and "all 8 re-drawn sample images are pixel-identical" in (rec.getMessage())
    )

    _set_meta(root, versions=None)  # a world written before versions were recorded: quiet while it matches
    (rec,) = _reuse(root, caplog)
    assert rec.levelno == logging.INFO and "records no Pillow version" in rec.getMessage()

    meta = load_world_meta(root)
    first = meta["classes"][0]["name"]
    sample = root / "images" / first / f"{first}_0001.png"
    with Image.open(sample) as im:
        Image.new("RGB", im.size).save(sample, format="PNG")  # what another rasteriser might have drawn
    (rec,) = _reuse(root, caplog)
    assert rec.levelno == logging.WARNING and "1 of 8 re-drawn sample images differ" in rec.getMessage()
    assert f"images/{first}/{first}_0001.png" in rec.getMessage()


# ----------------------------------------------------------------------------------------------------- versions()
@pytest.fixture
def fresh_versions():
    uio._static_versions.cache_clear()
    yield
    uio._static_versions.cache_clear()


def test_versions_records_packages_device_and_commit(fresh_versions, monkeypatch):
    import torch

    monkeypatch.setitem(uio._TRACKED_PACKAGES, "nopkg", ("unseen_no_such_module", "unseen-no-such-dist"))
    v = uio.versions()
    for key in ("torch", "torchvision", "numpy", "Pillow", "open_clip", "timm", "scipy", "h5py", "python"):
        assert v[key] and v[key] != "not installed", key
    assert v["nopkg"] == "not installed"
    assert v["Pillow"] == PIL.__version__ and v["numpy"] == np.__version__ and v["torch"] == torch.__version__
    assert v["cuda"] == str(torch.version.cuda or "none") and v["cpu"]
    if torch.cuda.is_available():
        assert v["device"] == torch.cuda.get_device_name(torch.cuda.current_device())
    else:
        assert v["device"] == v["cpu"] and v["cudnn"] in ("none", str(torch.backends.cudnn.version()))
    assert v["torch_threads"] == str(torch.get_num_threads())
    assert v["world_size"] == os.environ.get("WORLD_SIZE", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")  # under torchrun
    assert uio.versions()["world_size"] == "4"
    monkeypatch.setenv("WORLD_SIZE", v["world_size"])
    # the package's own checkout, when there is one (never an error without)
    expected = uio.git_commit(Path(uio.__file__).parent)
    assert v.get("git_commit") == expected
    assert uio.versions() == v and uio.versions() is not uio.versions()  # cached, but callers get copies


def test_versions_without_torch(fresh_versions, monkeypatch):
    monkeypatch.setattr(uio, "_import_torch", lambda: None)  # the worlds also render where torch is missing
    v = uio.versions()
    assert v["device"] == v["cpu"] and "cuda" not in v and v["Pillow"] == PIL.__version__


def _git(repo: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "commit.gpgsign=false", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_commit_of_a_checkout(tmp_path, monkeypatch):
    repo, pkg = tmp_path / "repo", tmp_path / "repo" / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "init")
    head = _git(repo, "rev-parse", "HEAD")
    assert uio.git_commit(pkg) == head
    (pkg / "untracked.py").write_text("y = 1\n")
    assert uio.git_commit(pkg) == head  # untracked files do not make a checkout dirty
    (pkg / "a.py").write_text("x = 2\n")
    assert uio.git_commit(pkg) == head + "-dirty"
    installed = repo / "venv" / "pkg"  # a copy inside the repository whose files git does not track
    installed.mkdir(parents=True)
    (installed / "a.py").write_text("x = 1\n")
    assert uio.git_commit(installed) is None
    assert uio.git_commit(tmp_path / "missing") is None
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no git at all
    assert uio.git_commit(pkg) is None
