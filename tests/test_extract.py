"""extract_h5: BiAM h5 layout from images (VGG-19 conv5_4, timm ViT, the tiny CNN), provenance, refusals."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from unseen.backbones import IMAGENET_MEAN, IMAGENET_STD
from unseen.features import list_hash, state_dict_hash
from unseen.io import DataFormatError, save_safetensors
from unseen.multilabel.data import BiAMH5Dataset, h5_name
from unseen.multilabel.extract import build_extractor, extract_h5, load_extractor, read_sidecar, sidecar_path

RELS = ["actor/0002_174174086.jpg", "airport/0001_2.png", "zebra/0003_3.png"]


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "Flickr"
    for i, rel in enumerate(RELS):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        size = (40 + 10 * i, 50)  # not square: the resize (no crop) squashes it
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
            root / rel, quality=95
        )
    return root


def _reference_input(path, size, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """Independent preprocessing: PIL bilinear resize to size x size, /255, (x - mean) / std."""
    with Image.open(path) as im:
        x = np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR), np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(x.transpose(2, 0, 1).copy())[None]


def _labels(n, rng):
    return rng.choice(np.array([-1, 0, 1], np.int8), size=n)


def test_vgg19_layout_values_and_provenance(images, tmp_path):
    import torchvision

    torch.manual_seed(
        0
    )  # VGG-19 configuration "E" built by torchvision, without the classifier: conv5_4 + ReLU
    ref = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["E"])[:36].eval()
    wfile = tmp_path / "vgg19.safetensors"
    save_safetensors(wfile, {f"features.{k}": v for k, v in ref.state_dict().items()})
    rng = np.random.default_rng(1)
    items = [(RELS[0], _labels(7, rng))]
    out = extract_h5(images, items, tmp_path / "nus_wide_train.h5", backbone="vgg19", weights=wfile)
    with h5py.File(out) as f:
        assert sorted(f.keys()) == [f"{h5_name(RELS[0])}-features", f"{h5_name(RELS[0])}-labels"]
        for rel, lab in items:
            feat = f[f"{h5_name(rel)}-features"]
            assert feat.shape == (512, 196) and feat.dtype == np.float32 and feat.compression == "gzip"
            assert f[f"{h5_name(rel)}-labels"].dtype == np.int8
            assert np.array_equal(f[f"{h5_name(rel)}-labels"][()], lab)
            with torch.no_grad():
                want = ref(_reference_input(images / rel, 224))[0].reshape(512, 196).numpy()  # conv5_4 + ReLU
            assert np.allclose(feat[()], want, atol=1e-4, rtol=1e-4)
            assert (feat[()] >= 0).all()
    meta = read_sidecar(out)
    assert sidecar_path(out).name == "nus_wide_train.h5.json"
    assert meta["backbone"] == "vgg19" and meta["resolution"] == 224 and meta["feature_shape"] == [512, 196]
    holder = torch.nn.Module()
    holder.features = ref  # torchvision's key names, as the extractor's
    assert meta["weights_sha256"] == state_dict_hash(holder)
    assert meta["image_list_sha256"] == list_hash([r for r, _ in items]) and meta["n_images"] == 1
    assert (
        "Resize" in meta["transform"] and "Normalize" in meta["transform"] and "Crop" not in meta["transform"]
    )
    assert meta["weights_file"] == str(wfile.resolve()) and meta["has_cls"] is False
    ds = BiAMH5Dataset(out, [r for r, _ in items], n_labels=7)
    x, y = ds[0]
    assert x.shape == (196, 512) and np.array_equal(y.numpy(), items[0][1])
    ds.close()


def test_vit_patch_tokens_and_cls(images, tmp_path):
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()  # never downloads
    wfile = tmp_path / "vit_tiny.safetensors"
    save_safetensors(wfile, model.state_dict())  # includes the classifier head: ignored by the extractor
    rng = np.random.default_rng(2)
    items = [(r, {"labels": _labels(10, rng), "labels_81": _labels(4, rng)}) for r in RELS]
    out = extract_h5(images, items, tmp_path / "vit.h5", backbone="vit:vit_tiny_patch16_224", weights=wfile)
    mean = model.pretrained_cfg["mean"]
    std = model.pretrained_cfg["std"]
    with h5py.File(out) as f:
        for rel, lab in items:
            k = h5_name(rel)
            assert f[f"{k}-features"].shape == (192, 196) and f[f"{k}-cls"].shape == (192,)
            assert f[f"{k}-cls"].dtype == np.float32
            assert np.array_equal(f[f"{k}-labels"][()], lab["labels"])
            assert np.array_equal(f[f"{k}-labels_81"][()], lab["labels_81"])
            with torch.no_grad():
                tok = model.forward_features(_reference_input(images / rel, 224, mean, std))[0]
            assert np.allclose(f[f"{k}-features"][()], tok[1:].T.numpy(), atol=1e-4)
            assert np.allclose(f[f"{k}-cls"][()], tok[0].numpy(), atol=1e-4)
    meta = read_sidecar(out)
    assert (
        meta["backbone"] == "vit:vit_tiny_patch16_224"
        and meta["has_cls"]
        and meta["feature_shape"] == [192, 196]
    )
    assert meta["label_keys"] == ["labels", "labels_81"]
    featurizer = load_extractor(sidecar_path(out))  # rebuilt from the sidecar: same tokens for the same image
    tokens, cls = featurizer([images / RELS[0]])
    with h5py.File(out) as f:
        assert np.allclose(tokens[0].T.numpy(), f[f"{h5_name(RELS[0])}-features"][()], atol=1e-5)
        assert np.allclose(cls[0].numpy(), f[f"{h5_name(RELS[0])}-cls"][()], atol=1e-5)


def test_refuses_to_overwrite_and_overwrites_when_told(images, tmp_path):
    items = [(RELS[0], np.array([1, -1, 0], np.int8))]
    out = tmp_path / "f.h5"
    extract_h5(images, items, out, backbone="tiny", image_size=32)
    before = out.read_bytes()
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        extract_h5(images, items, out, backbone="tiny", image_size=32)
    assert out.read_bytes() == before
    sidecar_path(out).unlink()  # a lone h5 without provenance is still not overwritten
    with pytest.raises(FileExistsError):
        extract_h5(images, items, out, backbone="tiny", image_size=32)
    extract_h5(
        images, [(RELS[1], np.array([1, 1, 1], np.int8))], out, backbone="tiny", image_size=32, overwrite=True
    )
    with h5py.File(out) as f:
        assert list(f.keys()) == [f"{h5_name(RELS[1])}-features", f"{h5_name(RELS[1])}-labels"]
    assert json.loads(sidecar_path(out).read_text())["image_list_sha256"] == list_hash([RELS[1]])


def test_missing_image_is_a_clear_error(images, tmp_path):
    out = tmp_path / "g.h5"
    items = [(RELS[0], np.zeros(3, np.int8)), ("actor/missing.jpg", np.zeros(3, np.int8))]
    with pytest.raises(DataFormatError, match=r"1 of 2 images not found: 'actor/missing.jpg'"):
        extract_h5(images, items, out, backbone="tiny", image_size=32)
    assert not out.exists() and not sidecar_path(out).exists()
    with pytest.raises(ValueError, match="same h5 name"):
        extract_h5(
            images,
            [(RELS[0], np.zeros(3, np.int8)), (RELS[0], np.zeros(3, np.int8))],
            out,
            backbone="tiny",
            image_size=32,
        )
    with pytest.raises(ValueError, match="unknown extraction backbone"):
        build_extractor("resnet7")


def test_tiny_cnn_grid_and_random_init_cannot_be_reloaded(images, tmp_path):
    out = extract_h5(
        images,
        [(r, np.zeros(2, np.int8)) for r in RELS],
        tmp_path / "t.h5",
        backbone="tiny",
        image_size=64,
        tiny_widths=[8, 16, 24],
    )
    with h5py.File(out) as f:
        assert f[f"{h5_name(RELS[2])}-features"].shape == (24, 16)  # C5 of 64 px at stride 16: 4 x 4 regions
    meta = read_sidecar(out)
    assert meta["options"] == {"tiny_widths": [8, 16, 24]} and meta["weights_file"] is None
    with pytest.raises(ValueError, match="randomly initialised"):
        load_extractor(sidecar_path(out))


def test_cli_extract_writes_the_test_layout_and_reads_back(images, tmp_path, capsys):
    from unseen.cli import main

    torch.manual_seed(0)
    wfile = tmp_path / "tiny.safetensors"
    from unseen.backbones import TinyBackbone

    save_safetensors(wfile, TinyBackbone([32, 64, 128]).state_dict())  # the CLI builds the default widths
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join(RELS) + "\n")
    rng = np.random.default_rng(3)
    seen, unseen = _labels(3 * 4, rng).reshape(3, 4), _labels(3 * 2, rng).reshape(3, 2)
    np.save(tmp_path / "seen.npy", seen)
    np.save(tmp_path / "unseen.npy", unseen)
    out = tmp_path / "nus_wide_test.h5"
    args = [
        "extract",
        str(images),
        str(out),
        "--list",
        str(lst),
        "--labels",
        str(tmp_path / "seen.npy"),
        "--unseen-labels",
        str(tmp_path / "unseen.npy"),
        "--backbone",
        "tiny",
        "--weights",
        str(wfile),
        "--image-size",
        "64",
    ]
    assert main(args) == 0
    assert "3 images" in capsys.readouterr().out
    with h5py.File(out) as f:
        for i, rel in enumerate(RELS):
            assert np.array_equal(f[f"{h5_name(rel)}-labels"][()], np.concatenate([seen[i], unseen[i]]))
            assert np.array_equal(f[f"{h5_name(rel)}-labels_81"][()], unseen[i])
    # the recorded extractor reproduces the stored features from the image file
    feats, _ = load_extractor(sidecar_path(out))([images / RELS[1]])
    with h5py.File(out) as f:
        stored = f[f"{h5_name(RELS[1])}-features"][()]
    assert np.allclose(feats[0].T.numpy(), stored, atol=1e-5)
    assert main(args) == 2  # existing output: refused, named
    assert "already exists" in capsys.readouterr().err
    np.save(tmp_path / "short.npy", seen[:2])
    assert main(args[:5] + ["--labels", str(tmp_path / "short.npy"), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "--weights is not set: features of a randomly initialised vgg19" in err  # refused before any work
    random_ok = ["--overwrite", "--allow-random-init"]
    assert main([*args[:5], "--labels", str(tmp_path / "short.npy"), *random_ok]) == 2
    err = capsys.readouterr().err
    assert "short.npy" in err and "one row per image" in err
    import pickle

    with open(tmp_path / "pickled.npy", "wb") as f:
        pickle.dump(seen, f)
    assert main([*args[:5], "--labels", str(tmp_path / "pickled.npy"), *random_ok]) == 2
    assert "pickled.npy: labels holds pickled objects" in capsys.readouterr().err
