"""Backbones: multi-scale maps, partial forwards, local weights files, transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from unseen.backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    WeightsError,
    build_backbone,
    build_feature_extractor,
    make_transforms,
)


def test_resnet50_maps_at_448():
    torch.manual_seed(0)
    bb = build_backbone("resnet50").eval()
    assert bb.out_channels == (512, 1024, 2048) and bb.strides == (8, 16, 32)
    with torch.no_grad():
        maps = bb(torch.randn(1, 3, 448, 448))
    assert [tuple(m.shape[1:]) for m in maps] == [(512, 56, 56), (1024, 28, 28), (2048, 14, 14)]


def test_resnet101_structure_and_small_input():
    bb = build_backbone("resnet101").eval()
    assert len(bb.layer3) == 23  # ResNet-101, not 50
    assert not any(k.startswith("fc.") for k in bb.state_dict())
    with torch.no_grad():
        maps = bb(torch.randn(1, 3, 224, 224))
    assert [tuple(m.shape[1:]) for m in maps] == [(512, 28, 28), (1024, 14, 14), (2048, 7, 7)]


def test_tiny_maps_and_partial_forward_skips_later_stages():
    torch.manual_seed(0)
    bb = build_backbone("tiny", tiny_widths=[16, 24, 40]).eval()
    assert bb.out_channels == (16, 24, 40)
    x = torch.randn(2, 3, 64, 64)
    calls: list[str] = []
    for name in ("layer2", "layer3", "layer4"):
        getattr(bb, name).register_forward_hook(lambda *a, n=name: calls.append(n))
    with torch.no_grad():
        full = bb(x)
        assert [tuple(m.shape[1:]) for m in full] == [(16, 16, 16), (24, 8, 8), (40, 4, 4)]  # strides 4/8/16
        calls.clear()
        first = bb(x, upto=0)
        assert len(first) == 1 and calls == ["layer2"]
        calls.clear()
        rest = bb.forward_from(first[0], start=1, upto=2)
        assert calls == ["layer3", "layer4"]
    for a, b in zip(full, first + rest):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="upto"):
        bb(x, upto=3)


def test_names_and_errors():
    with pytest.raises(ValueError, match="build_feature_extractor"):
        build_backbone("vgg19")
    with pytest.raises(ValueError, match="available: resnet101"):
        build_backbone("resnet18")
    with pytest.raises(ValueError, match="no published weights"):
        build_backbone("tiny", pretrained=True)


def test_vgg19_single_map_extractor():
    ext = build_feature_extractor("vgg19").eval()
    assert ext.out_channels == 512 and ext.stride == 16
    assert len(ext.features) == 36 and isinstance(ext.features[35], torch.nn.ReLU)  # conv5_4 + ReLU
    with torch.no_grad():
        y = ext(torch.randn(1, 3, 64, 96))
    assert tuple(y.shape) == (1, 512, 4, 6) and float(y.min()) >= 0.0
    last = build_feature_extractor("tiny").eval()
    with torch.no_grad():
        assert tuple(last(torch.randn(1, 3, 64, 64)).shape) == (1, 128, 4, 4)


# --------------------------------------------------------------------------------------------- weights
@pytest.fixture(scope="module")
def torchvision_resnet50_state():
    import torchvision

    torch.manual_seed(1)
    return torchvision.models.resnet50(weights=None).state_dict()  # includes fc.*


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_load_local_torchvision_weights(tmp_path, torchvision_resnet50_state, suffix):
    path = tmp_path / f"resnet50{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in torchvision_resnet50_state.items()}, str(path))
    else:
        torch.save(torchvision_resnet50_state, path)
    torch.manual_seed(2)  # a different random init, so equality means "loaded"
    bb = build_backbone("resnet50", weights=str(path))
    own = bb.state_dict()
    for k, v in torchvision_resnet50_state.items():
        if not k.startswith("fc."):
            torch.testing.assert_close(own[k], v, rtol=0, atol=0)


def test_load_wrapped_and_tiny_weights(tmp_path):
    torch.manual_seed(3)
    src = build_backbone("tiny")
    path = tmp_path / "tiny.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)
    dst = build_backbone("tiny", weights=path)
    for k, v in src.state_dict().items():
        torch.testing.assert_close(dst.state_dict()[k], v)


class _NotATensor:
    pass


def test_bad_weights_files_give_clear_errors(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(WeightsError, match="nope.safetensors: weights file not found"):
        build_backbone("tiny", weights=missing)

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(WeightsError, match="garbage.pth: not a readable weights file"):
        build_backbone("tiny", weights=garbage)

    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 32)
    with pytest.raises(WeightsError, match="broken.safetensors: not a readable weights file"):
        build_backbone("tiny", weights=broken)

    code = tmp_path / "code.pt"
    torch.save({"obj": _NotATensor()}, code)
    with pytest.raises(WeightsError, match="code.pt"):
        build_backbone("tiny", weights=code)

    wrong = tmp_path / "tiny_as_resnet.safetensors"
    from safetensors.torch import save_file

    save_file(build_backbone("tiny").state_dict(), str(wrong))
    with pytest.raises(WeightsError) as err:
        build_backbone("resnet50", weights=wrong)
    msg = str(err.value)
    assert "tiny_as_resnet.safetensors" in msg and "missing keys: " in msg and "conv1.weight" in msg
    assert "unexpected keys: " in msg and "more)" in msg

    narrow = tmp_path / "narrow.safetensors"
    save_file(build_backbone("tiny", tiny_widths=[16, 32, 64]).state_dict(), str(narrow))
    with pytest.raises(WeightsError, match="narrow.safetensors: shape mismatch"):
        build_backbone("tiny", weights=narrow)

    other = tmp_path / "weights.npz"
    other.write_bytes(b"x")
    with pytest.raises(WeightsError, match="unsupported weights format"):
        build_backbone("tiny", weights=other)


# --------------------------------------------------------------------------------------------- transforms
def test_transforms_follow_the_spec():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (500, 700, 3), dtype=np.uint8))
    train, test = make_transforms(448, train=True), make_transforms(448, train=False)
    names = [type(t).__name__ for t in train.transforms]
    assert names == ["Resize", "RandomCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    assert train.transforms[0].size == 512  # 448 * 8 / 7, shorter side
    assert [type(t).__name__ for t in test.transforms] == ["Resize", "CenterCrop", "ToTensor", "Normalize"]
    assert test.transforms[0].size == 448
    assert tuple(train(img).shape) == (3, 448, 448) and tuple(test(img).shape) == (3, 448, 448)
    norm = test.transforms[-1]
    assert tuple(norm.mean) == IMAGENET_MEAN and tuple(norm.std) == IMAGENET_STD
