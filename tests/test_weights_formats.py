"""Weights in the formats users hold, each built here in its exact layout and loaded without running code.

CLIP: OpenAI's TorchScript archive (OpenAI key names, mostly fp16, the ``input_resolution`` / ``context_length`` /
``vocab_size`` entries), open_clip ``.bin`` / ``.pt`` / ``.safetensors``, a pre-filled Hugging Face hub cache used
offline. CNN backbones: torchvision and timm layouts (heads ignored), the same hub route. Oracles: the archive's own
``torch.jit.load(...).state_dict()`` and open_clip's OpenAI loader, both run on files made here (trusted).
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import socket
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from unseen.backbones import (
    WeightsError,
    build_backbone,
    build_feature_extractor,
    is_torchscript_archive,
    read_state_dict,
    read_torchscript,
)
from unseen.compositional import clip as C

TEST_ARCH = "unseen-test-clip"  # ViT/8, width 64, text width 32, QuickGELU (clip_configs/)
# test-only architectures: the test CLIP with GELU, and one wide enough (multiples of 64) for open_clip's OpenAI
# builder, which infers 64-wide heads from the widths
EXTRA_ARCHS = {
    "unseen-test-clip-gelu": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    },
    "unseen-oai-test": {
        "embed_dim": 32,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 64, "patch_size": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
    },
}
OPENAI_META = {"input_resolution": 32, "context_length": 16, "vocab_size": 49408}


@pytest.fixture(scope="module", autouse=True)
def extra_archs(tmp_path_factory):
    import open_clip

    folder = tmp_path_factory.mktemp("clip_configs")
    for name, cfg in EXTRA_ARCHS.items():
        (folder / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)


class _Node(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _script(module: nn.Module) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated; its archives are what users hold
        return torch.jit.script(module)


def _openai_dtype(key: str, value: torch.Tensor) -> torch.Tensor:
    """OpenAI ships conv / linear / attention weights and biases and the projections in fp16; layer norms,
    embeddings and the logit scale in fp32."""
    fp32 = ("ln_", "class_embedding", "positional_embedding", "token_embedding", "logit_scale")
    return value.clone() if any(part.startswith(fp32) for part in key.split(".")) else value.half()


def openai_archive(path: Path, state: dict[str, torch.Tensor]) -> Path:
    """A TorchScript archive laid out as OpenAI's CLIP ``.pt``: the tensors at OpenAI's (= open_clip's) names and
    dtypes, the three metadata tensors at the root, and a plain (non-state) tensor attribute
    ``transformer.attn_mask`` as a scripted OpenAI model has."""
    root = _Node()
    for key, value in state.items():
        *parents, leaf = key.split(".")
        mod = root
        for name in parents:
            if not hasattr(mod, name):
                mod.add_module(name, _Node())
            mod = getattr(mod, name)
        value = _openai_dtype(key, value)
        mod.register_parameter(leaf, nn.Parameter(value, requires_grad=False))
    for key, value in OPENAI_META.items():
        root.register_buffer(key, torch.tensor(value))
    root.transformer.attn_mask = torch.full((4, 4), float("-inf")).triu(1)
    torch.jit.save(_script(root), str(path))
    return path


@pytest.fixture(scope="module")
def test_clip_state():
    torch.manual_seed(0)
    return C.create_clip(TEST_ARCH).state_dict()


@pytest.fixture(scope="module")
def archive(tmp_path_factory, test_clip_state):
    return openai_archive(tmp_path_factory.mktemp("openai") / "ViT-T-8.pt", test_clip_state)


def _assert_loaded(model: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    assert set(own) == set(expected)
    for k, v in expected.items():
        torch.testing.assert_close(own[k], v.to(own[k].dtype), rtol=0, atol=0, msg=k)


def _no_code(monkeypatch):
    """Make every route that could compile or run an archive's code fail loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError("TorchScript / pickle code path used")

    monkeypatch.setattr(torch.jit, "load", refuse)
    monkeypatch.setattr(torch._C, "import_ir_module", refuse)
    monkeypatch.setattr(torch, "load", refuse)  # state dicts go through it; archives must not


# --------------------------------------------------------------------------------------------- OpenAI TorchScript
def test_openai_archive_reads_as_its_state_dict_without_running_code(archive, test_clip_state, monkeypatch):
    assert is_torchscript_archive(archive)
    with pytest.raises(Exception, match="TorchScript"):  # the issue: weights_only refuses archives
        torch.load(archive, weights_only=True)
    ref = torch.jit.load(str(archive)).state_dict()  # the oracle (our own archive: running it is fine)
    assert set(OPENAI_META) <= set(ref) and "transformer.attn_mask" not in ref
    _no_code(monkeypatch)
    got = read_torchscript(archive)
    assert list(got) == list(ref)
    for k, v in ref.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k
    assert got["visual.conv1.weight"].dtype == torch.float16

    model = C.create_clip(TEST_ARCH, archive)  # metadata dropped, fp16 -> the model's fp32
    _assert_loaded(model, {k: _openai_dtype(k, v) for k, v in test_clip_state.items()})
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_openai_archive_loads_as_open_clips_openai_loader(tmp_path):
    import open_clip

    torch.manual_seed(1)
    src = C.create_clip("unseen-oai-test").state_dict()
    path = openai_archive(tmp_path / "ViT-oai.pt", src)
    ref = open_clip.load_openai_model(str(path), precision="fp32", device="cpu")  # runs torch.jit.load
    ours = C.create_clip("unseen-oai-test", path)
    _assert_loaded(ours, ref.state_dict())
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    ids = C.tokenize(["a photo of a red dog", "x"], 16)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(images), ref.encode_image(images), rtol=0, atol=1e-6)
        torch.testing.assert_close(ours.encode_text(ids), ref.encode_text(ids), rtol=0, atol=1e-5)


def test_openai_state_dict_with_metadata(tmp_path, test_clip_state):
    path = tmp_path / "openai_state.pt"  # what `torch.save(jit_model.state_dict())` leaves
    torch.save({**test_clip_state, **{k: torch.tensor(v) for k, v in OPENAI_META.items()}}, path)
    _assert_loaded(C.create_clip(TEST_ARCH, path), test_clip_state)


def test_archive_code_never_runs(tmp_path, capfd):
    class Evil(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.weight

        @torch.jit.export
        def __getstate__(self) -> tuple[torch.Tensor, bool]:
            return (self.weight, self.training)

        @torch.jit.export
        def __setstate__(self, state: tuple[torch.Tensor, bool]) -> None:
            print("ARCHIVE CODE RAN")
            self.weight = state[0] * 0 + 666  # rewrites the weights it is loaded with
            self.training = state[1]

    root = _Node()
    root.evil = Evil()
    path = tmp_path / "evil.pt"
    torch.jit.save(_script(root), str(path))
    capfd.readouterr()
    with pytest.raises(WeightsError, match=r"evil\.pt: module evil .*__setstate__"):
        read_state_dict(path)
    assert "ARCHIVE CODE RAN" not in capfd.readouterr().out
    loaded = torch.jit.load(str(path))  # the oracle: loading the archive the usual way runs its code
    assert "ARCHIVE CODE RAN" in capfd.readouterr().out
    assert float(loaded.state_dict()["evil.weight"][0]) == 666


class _Exec:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def test_pickled_code_in_an_archive_is_refused(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "pickled.pt"
    with zipfile.ZipFile(path, "w") as zf:  # the layout of a TorchScript archive, data.pkl asking for exec
        zf.writestr("pickled/data.pkl", pickle.dumps({"x": _Exec(marker)}, protocol=2))
        zf.writestr("pickled/constants.pkl", pickle.dumps((), protocol=2))
        zf.writestr("pickled/code/__torch__.py", "")
    with pytest.raises(
        WeightsError,
        match=r"pickled\.pt: not a readable TorchScript archive .*(__builtin__|builtins)\.exec, which is not",
    ):
        read_state_dict(path)
    assert not marker.exists()


def test_damaged_archives(tmp_path, archive):
    with zipfile.ZipFile(archive) as zf:
        records = {n: zf.read(n) for n in zf.namelist()}
    prefix = next(n for n in records if n.endswith("/data.pkl")).split("/")[0]
    first = min((n for n in records if n.startswith(f"{prefix}/data/")), key=len)

    def rewrite(name: str, drop: str, short: bool) -> Path:
        out = tmp_path / name
        with zipfile.ZipFile(out, "w") as zf:
            for n, b in records.items():
                if n != drop:
                    zf.writestr(n, b)
                elif short:
                    zf.writestr(n, b[:-2])
        return out

    with pytest.raises(WeightsError, match=r"short\.pt: .*holds \d+ bytes, expected"):
        read_state_dict(rewrite("short.pt", first, short=True))
    with pytest.raises(WeightsError, match=r"gone\.pt: not a readable TorchScript archive \(KeyError"):
        read_state_dict(rewrite("gone.pt", first, short=False))


# --------------------------------------------------------------------------------------------- architecture checks
def test_architecture_is_checked_against_the_file(archive):
    with pytest.raises(WeightsError) as err:
        C.create_clip("unseen-oai-test", archive)
    msg = str(err.value)
    assert msg.startswith(
        f"{archive}: holds a CLIP with ViT/8 vision (width 64, 2 blocks, 32 px), text (width 32"
    )
    assert (
        "the architecture 'unseen-oai-test' is ViT/8 vision (width 64, 2 blocks, 32 px), text (width 64"
        in msg
    )
    assert "\n" not in msg


def test_b16_weights_for_an_l14_config_are_named():
    import open_clip

    with torch.device("meta"):  # real ViT-B/16 and ViT-L/14 layouts, no memory
        b16 = open_clip.create_model("ViT-B-16", device="meta")
        l14 = open_clip.create_model("ViT-L-14-quickgelu", device="meta")
    with pytest.raises(WeightsError) as err:
        C.check_clip_architecture(b16.state_dict(), l14, "ViT-L-14-quickgelu", "/w/ViT-B-16.pt")
    assert str(err.value) == (
        "/w/ViT-B-16.pt: holds a CLIP with ViT/16 vision (width 768, 12 blocks, 224 px), text (width 512, "
        "12 blocks, context 77), embedding 512; the architecture 'ViT-L-14-quickgelu' is ViT/14 vision (width "
        "1024, 24 blocks, 224 px), text (width 768, 12 blocks, context 77), embedding 768 (set model.clip_arch "
        "to the file's architecture)"
    )


def test_not_a_clip_file(tmp_path):
    path = tmp_path / "resnet.safetensors"
    save_file(build_backbone("tiny").state_dict(), str(path))
    with pytest.raises(WeightsError, match=r"resnet\.safetensors: holds a CLIP with no CLIP tensors"):
        C.create_clip(TEST_ARCH, path)
    with pytest.raises(WeightsError, match=r"nope\.pt: weights file not found"):
        C.create_clip(TEST_ARCH, tmp_path / "nope.pt")


def test_quickgelu_follows_the_file(archive, tmp_path, test_clip_state, caplog):
    caplog.set_level(logging.WARNING, logger="unseen")
    C.create_clip(TEST_ARCH, archive)  # QuickGELU model, OpenAI file: silent
    assert not caplog.records
    model = C.create_clip("unseen-test-clip-gelu", archive)  # loads, with a warning naming file and fix
    _assert_loaded(model, {k: _openai_dtype(k, v) for k, v in test_clip_state.items()})
    (rec,) = caplog.records
    assert str(archive) in rec.getMessage() and "trained with QuickGELU" in rec.getMessage()
    assert "use 'unseen-test-clip-gelu-quickgelu'" in rec.getMessage()


# --------------------------------------------------------------------------------------------- open_clip files
@pytest.mark.parametrize("layout", ["bin", "checkpoint", "safetensors"])
def test_open_clip_files(tmp_path, test_clip_state, layout):
    if layout == "bin":
        path = tmp_path / "open_clip_pytorch_model.bin"
        torch.save(test_clip_state, path)
    elif layout == "checkpoint":  # open_clip's training checkpoint (epoch_N.pt), saved from DDP
        path = tmp_path / "epoch_3.pt"
        torch.save(
            {
                "epoch": 3,
                "name": "run",
                "state_dict": {f"module.{k}": v for k, v in test_clip_state.items()},
                "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
            },
            path,
        )
    else:
        path = tmp_path / "open_clip_model.safetensors"
        save_file({k: v.contiguous() for k, v in test_clip_state.items()}, str(path))
    _assert_loaded(C.create_clip(TEST_ARCH, path), test_clip_state)


# --------------------------------------------------------------------------------------------- hub cache, offline
@pytest.fixture
def hub(tmp_path, monkeypatch):
    """``put(repo, {filename: bytes})`` fills a Hugging Face cache as huggingface_hub lays it out (blobs named by
    hash, snapshot files linking to them, refs/main naming the revision); the machine is offline and any
    connection attempt fails the test."""
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise AssertionError("network access")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)

    def put(repo: str, files: dict[str, bytes]) -> Path:
        folder = cache / f"models--{repo.replace('/', '--')}"
        revision = hashlib.sha1(repo.encode()).hexdigest()
        snapshot = folder / "snapshots" / revision
        snapshot.mkdir(parents=True)
        (folder / "blobs").mkdir()
        (folder / "refs").mkdir()
        (folder / "refs" / "main").write_text(revision)
        for name, data in files.items():
            blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
            blob.write_bytes(data)
            (snapshot / name).symlink_to(Path("../..") / "blobs" / blob.name)
        return snapshot

    return put


def _bytes(path: Path) -> bytes:
    return path.read_bytes()


def test_clip_from_an_offline_hub_cache(hub, tmp_path, test_clip_state, caplog):
    save_file({k: v.contiguous() for k, v in test_clip_state.items()}, str(tmp_path / "w.safetensors"))
    torch.save(test_clip_state, tmp_path / "w.bin")
    config = {"model_cfg": EXTRA_ARCHS["unseen-test-clip-gelu"], "preprocess_cfg": {}}  # trained with GELU
    hub(
        "org/tiny-clip",
        {
            "open_clip_config.json": json.dumps(config).encode(),
            **{"open_clip_model.safetensors": _bytes(tmp_path / "w.safetensors")},
        },
    )
    hub("org/tiny-clip-bin", {"open_clip_pytorch_model.bin": _bytes(tmp_path / "w.bin")})

    caplog.set_level(logging.WARNING, logger="unseen")
    _assert_loaded(C.create_clip("unseen-test-clip-gelu", "hf-hub:org/tiny-clip"), test_clip_state)
    assert not caplog.records  # the config says GELU, as the architecture
    _assert_loaded(C.create_clip(TEST_ARCH, "hf-hub:org/tiny-clip"), test_clip_state)
    (rec,) = caplog.records
    assert "models--org--tiny-clip" in rec.getMessage() and "trained with GELU" in rec.getMessage()
    _assert_loaded(C.create_clip(TEST_ARCH, "hf-hub:org/tiny-clip-bin"), test_clip_state)

    with pytest.raises(WeightsError) as err:
        C.create_clip(TEST_ARCH, "hf-hub:org/missing")
    msg = str(err.value)
    assert msg.startswith(
        "hf-hub:org/missing: none of open_clip_model.safetensors, open_clip_pytorch_model.bin"
    )
    assert "(HF_HUB_OFFLINE=1)" in msg and "models--org--missing/snapshots/<revision>/<file>" in msg
    with pytest.raises(WeightsError, match="expected hf-hub:<org>/<name>"):
        C.create_clip(TEST_ARCH, "hf-hub:no-org")


def test_backbone_from_an_offline_hub_cache(hub, tmp_path):
    torch.manual_seed(3)
    src = build_backbone("tiny").state_dict()
    save_file({**src, "head.fc.weight": torch.zeros(5, 128)}, str(tmp_path / "m.safetensors"))  # timm's head
    hub("timm/tiny-test", {"model.safetensors": _bytes(tmp_path / "m.safetensors"), "config.json": b"{}"})
    torch.manual_seed(4)
    _assert_loaded(build_backbone("tiny", weights="hf-hub:timm/tiny-test"), src)
    with pytest.raises(
        WeightsError, match=r"hf-hub:timm/other: none of model.safetensors, pytorch_model.bin"
    ):
        build_backbone("tiny", weights="hf-hub:timm/other")


# --------------------------------------------------------------------------------------------- CNN layouts
@pytest.mark.parametrize(
    "heads",
    [
        {"fc.weight": (10, 128), "fc.bias": (10,)},  # torchvision ResNet
        {"classifier.0.weight": (16, 32), "classifier.6.bias": (10,)},  # torchvision VGG
        {"pre_logits.fc1.weight": (16, 128, 1, 1), "head.fc.weight": (10, 16)},  # timm VGG
    ],
)
def test_classifier_heads_are_ignored(tmp_path, heads):
    torch.manual_seed(5)
    src = build_backbone("tiny").state_dict()
    path = tmp_path / "with_head.pth"
    torch.save({**src, **{k: torch.randn(s) for k, s in heads.items()}}, path)
    _assert_loaded(build_backbone("tiny", weights=path), src)


@pytest.mark.slow
@pytest.mark.parametrize("library", ["torchvision", "timm"])
def test_resnet101_files(tmp_path, library):
    import timm
    import torchvision

    torch.manual_seed(6)
    if library == "torchvision":  # resnet101-*.pth: fc.* included
        state = torchvision.models.resnet101(weights=None).state_dict()
        path = tmp_path / "resnet101-63fe2227.pth"
        torch.save(state, path)
    else:  # timm's resnet101.tv_in1k: model.safetensors, same names as torchvision
        state = timm.create_model("resnet101", pretrained=False).state_dict()
        path = tmp_path / "model.safetensors"
        save_file(state, str(path))
    assert "fc.weight" in state
    model = build_backbone("resnet101", weights=path)
    _assert_loaded(model, {k: v for k, v in state.items() if not k.startswith("fc.")})


@pytest.mark.slow
@pytest.mark.parametrize("library", ["torchvision", "timm"])
def test_vgg19_files(tmp_path, library):
    import timm
    import torchvision

    torch.manual_seed(7)
    if library == "torchvision":  # vgg19-dcbb9e9d.pth: classifier.* included
        state = torchvision.models.vgg19(weights=None).state_dict()
        path = tmp_path / "vgg19-dcbb9e9d.pth"
        torch.save(state, path)
    else:  # timm's vgg19.tv_in1k: the features plus pre_logits.* / head.*
        state = timm.create_model("vgg19", pretrained=False).state_dict()
        assert any(k.startswith("pre_logits.") for k in state) and any(k.startswith("head.") for k in state)
        path = tmp_path / "vgg19.bin"
        torch.save(state, path)
    model = build_feature_extractor("vgg19", weights=path)
    _assert_loaded(model, {k: v for k, v in state.items() if k.startswith("features.")})


@pytest.mark.slow
def test_real_b16_file_for_the_l14_config(tmp_path):
    import open_clip

    path = tmp_path / "ViT-B-16.safetensors"
    b16 = open_clip.create_model("ViT-B-16")
    save_file({k: v.half().contiguous() for k, v in b16.state_dict().items()}, str(path))
    del b16
    with pytest.raises(
        WeightsError, match=r"ViT-B-16\.safetensors: holds a CLIP with ViT/16 vision .* is ViT/14"
    ):
        C.create_clip("ViT-L-14-quickgelu", path)
