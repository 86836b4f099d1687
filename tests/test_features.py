import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from unseen.features import FeatureCache, PackedMaps, extract, provenance


class TwoMaps(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.out_channels = (4, 6)

    def forward(self, x, upto=None):
        a = self.c1(x)
        return [a, self.c2(a)]


def test_packed_maps_round_trip():
    torch.manual_seed(0)
    net = TwoMaps().eval()
    ds = TensorDataset(torch.randn(10, 3, 16, 16), torch.zeros(10, dtype=torch.long))
    feats, shapes = extract(net, ds, batch_size=4)
    assert feats.shape == (10, 4 * 8 * 8 + 6 * 4 * 4) and shapes == [(4, 8, 8), (6, 4, 4)]
    packed = PackedMaps(shapes)
    with torch.no_grad():
        want = net(ds.tensors[0][:3])
    got = packed(torch.from_numpy(feats[:3]))
    for w, g in zip(want, got):
        assert torch.allclose(w, g, atol=1e-6)
    assert len(packed(torch.from_numpy(feats[:3]), upto=0)) == 1


def test_cache_detects_stale_inputs(tmp_path):
    torch.manual_seed(0)
    net = TwoMaps().eval()
    ds = TensorDataset(torch.randn(6, 3, 16, 16), torch.zeros(6, dtype=torch.long))
    files = [f"img{i}.png" for i in range(6)]
    cache = FeatureCache(tmp_path / "c")
    calls = []

    def build():
        calls.append(1)
        return extract(net, ds)

    exp = provenance("two", net, "tf-A", files)
    f1, meta = cache.load_or_build(exp, build)
    f2, _ = cache.load_or_build(exp, build)
    assert len(calls) == 1 and np.array_equal(f1, f2)  # reused when nothing changed
    for changed in (
        provenance("two", net, "tf-B", files),  # transform changed
        provenance("two", net, "tf-A", files[::-1]),  # image list changed
        provenance("other", net, "tf-A", files),
    ):  # backbone changed
        ok, why = cache.is_valid(changed)
        assert not ok and "stale" in why
    with torch.no_grad():
        net.c1.weight.add_(1.0)  # weights changed -> hash changes -> rebuilt
    cache.load_or_build(provenance("two", net, "tf-A", files), build)
    assert len(calls) == 2
    assert meta["shapes"] == [[4, 8, 8], [6, 4, 4]]


def test_cache_without_sidecar_is_not_reused(tmp_path):
    cache = FeatureCache(tmp_path / "c")
    cache.save(np.zeros((2, 3), np.float32), {"n_images": 2})
    cache.sidecar.unlink()  # e.g. a crash between the two writes
    assert cache.is_valid({"n_images": 2}) == (False, "no cache yet")
    with pytest.raises(FileNotFoundError):
        cache.load()
