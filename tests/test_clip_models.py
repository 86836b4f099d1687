"""CLIP text/visual forwards, zero-shot CLIP, CSP and Refiner-R on the random `unseen-test-clip` (no download).

Oracles: open_clip's own encode_text / encode_image, per-row re-encoding, and the fact that a soft-vocabulary row
initialised from a single-token name *is* that token's embedding (so soft prompts at init equal plain prompts).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from unseen.compositional import clip as C
from unseen.compositional.baselines import CSP, CSPConfig, ZeroShotCLIP, ZeroShotCLIPConfig
from unseen.compositional.refiner import Refiner, RefinerConfig
from unseen.config import ConfigError

ATTRS = ["red", "old", "wet"]  # single BPE tokens each (asserted below)
OBJS = ["dog", "cat", "car", "tree"]
PAIRS = torch.tensor([[0, 0], [1, 1], [2, 2], [0, 3], [1, 0], [2, 3]])


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return C.create_clip("unseen-test-clip")


@pytest.fixture
def images(clip):
    g = torch.Generator().manual_seed(1)
    size = clip.visual.image_size[0]
    return torch.randn(3, 3, size, size, generator=g)


def _plain(clip, texts, length=16):
    return clip.encode_text(C.tokenize(texts, length), normalize=True)


def _quiet(**kw):
    """Refiner config without dropout (deterministic forwards)."""
    base = dict(refine_blocks=2, query_dropout=0.0, branch_dropout=0.0, proj_dropout=0.0, vocab_dropout=0.0)
    return RefinerConfig(**{**base, **kw})


def test_single_token_names():
    for n in ATTRS + OBJS:
        assert len(C.bpe_ids(n)) == 1, n


# --------------------------------------------------------------------------------------------- text forward
def test_text_forward_equals_open_clip(clip):
    texts = ["a photo of ancient_city", "a big red dog on the green grass near a house", "x", ""]
    ids = C.tokenize(texts, 16)
    for normalize in (True, False):
        ref = clip.encode_text(ids, normalize=normalize)
        torch.testing.assert_close(C.encode_text(clip, ids, normalize=normalize), ref, rtol=0, atol=1e-6)


def test_context_slicing_and_eot_pooling(clip):
    texts = ["a photo of red dog", "a cat", "wet old tree", "a"]
    ids16, ids8 = C.tokenize(texts, 16), C.tokenize(texts, 8)
    full = C.encode_text(clip, ids16)
    torch.testing.assert_close(
        C.encode_text(clip, ids8), full, rtol=0, atol=1e-5
    )  # causal: padding is irrelevant
    # each row alone, cut right after its EOT (there the EOT is the last position): same features
    for i, row in enumerate(ids16):
        eot = int((row == C.EOT_ID).nonzero()[0])
        alone = C.encode_text(clip, row[None, : eot + 1])
        torch.testing.assert_close(alone[0], full[i], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="context length"):
        C.encode_text(clip, torch.zeros(1, 17, dtype=torch.long))


def test_substitutions(clip):
    emb = clip.token_embedding.weight
    red, dog = C.bpe_ids("red")[0], C.bpe_ids("dog")[0]
    prefix = C.bpe_ids("a photo of")
    row = C.template_ids(prefix, 2, 8)
    assert int(row.argmax()) == 1 + len(prefix) + 2  # EOT right after the two slots
    subs = [(1 + len(prefix), torch.stack([emb[red], emb[dog]]))]
    torch.testing.assert_close(
        C.encode_text(clip, row[None], subs), _plain(clip, ["a photo of red dog"]), rtol=0, atol=1e-5
    )
    # per-row values (N, k, W); a substitution after EOT changes nothing (causal mask)
    rows = row[None].expand(2, -1)
    per_row = torch.stack([torch.stack([emb[red], emb[dog]]), torch.stack([emb[dog], emb[red]])])
    out = C.encode_text(clip, rows, [(4, per_row), (7, torch.randn(2, 1, emb.shape[1]))])
    torch.testing.assert_close(
        out, _plain(clip, ["a photo of red dog", "a photo of dog red"]), rtol=0, atol=1e-5
    )
    with pytest.raises(ValueError, match="outside"):
        C.encode_text(clip, row[None], [(7, emb[:2])])
    with pytest.raises(ValueError, match="fit"):
        C.template_ids(prefix, 10, 8)


def test_chunked_encoding_equals_one_shot(clip):
    ids = C.tokenize([f"a photo of {a} {o}" for a in ATTRS for o in OBJS], 16)
    one = C.encode_text(clip, ids)
    for size in (1, 5, 100):
        chunked = C.encode_in_chunks(lambda s, e: C.encode_text(clip, ids[s:e]), len(ids), size)
        torch.testing.assert_close(chunked, one, rtol=0, atol=1e-6)


def test_names_and_vocab_init(clip):
    assert C.prompt_name("Faux.Leather") == "faux leather"
    assert C.prompt_name("traffic_light") == "traffic_light"
    assert C.vocab_name("traffic_light") == "traffic light"
    assert C.vocab_name("Shoes.Sneakers.and.Athletic.Shoes") == "shoes sneakers and athletic shoes"
    names = ["traffic_light", "Faux.Leather", "red", "dry-erase_board"]
    emb = clip.token_embedding.weight
    got = C.soft_vocabulary_init(clip, names)
    for i, text in enumerate(["traffic light", "faux leather", "red", "dry-erase board"]):
        ids = C.tokenize(text, 16)[0]  # independent path: the full tokenizer, then strip SOT / EOT / padding
        body = ids[1 : int(ids.argmax())]
        torch.testing.assert_close(got[i], emb[body].mean(0))
    kept = C.soft_vocabulary_init(clip, ["traffic_light"], split_underscore=False)
    assert len(C.bpe_ids("traffic_light")) > len(C.bpe_ids("traffic light"))
    assert not torch.allclose(kept[0], got[0])


# --------------------------------------------------------------------------------------------- visual forward
def test_image_tokens(clip, images):
    g, tokens = C.encode_image_tokens(clip, images, 2)
    torch.testing.assert_close(g, clip.encode_image(images), rtol=0, atol=1e-6)
    n_patch = (clip.visual.image_size[0] // clip.visual.patch_size[0]) ** 2
    assert [t.shape for t in tokens] == [(3, 1 + n_patch, C.vision_width(clip))] * 2
    # CLS first and before ln_post: proj(ln_post(CLS of the last block)) is g
    torch.testing.assert_close(clip.visual.ln_post(tokens[-1][:, 0]) @ clip.visual.proj, g, rtol=0, atol=1e-6)
    assert not torch.allclose(tokens[0], tokens[1])


# --------------------------------------------------------------------------------------------- zero-shot CLIP
def test_zeroshot_clip_logits(clip, images):
    attrs, objs = ["Faux.Leather", "old_rusty"], ["Boots.Ankle", "traffic_light"]
    m = ZeroShotCLIP(ZeroShotCLIPConfig(text_chunk=3), clip, attrs, objs)
    pairs = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]])
    prompts = [
        "a photo of faux leather boots ankle",
        "a photo of faux leather traffic_light",
        "a photo of old_rusty boots ankle",
        "a photo of old_rusty traffic_light",
    ]
    assert m.prompts(pairs) == prompts
    with torch.no_grad():
        out = m(images, pairs)
        ref = 100 * clip.encode_image(images, normalize=True) @ _plain(clip, prompts).t()
    torch.testing.assert_close(out["scores"], ref, rtol=0, atol=1e-4)
    assert out["logits_comp"] is out["scores"]
    assert list(m.state_dict()) == [] and not [p for p in m.parameters() if p.requires_grad]


def test_logit_scale_zero_means_the_clips_own(clip, images):
    own = float(clip.logit_scale.exp())
    assert abs(own - 100.0) > 1  # the test CLIP's scale is not 100, so the two settings differ
    pairs = torch.tensor([[0, 0], [1, 1]])
    with torch.no_grad():
        zs = {
            s: ZeroShotCLIP(ZeroShotCLIPConfig(logit_scale=s), clip, ATTRS, OBJS)(images, pairs)["scores"]
            for s in (100.0, 0.0)
        }
        torch.testing.assert_close(zs[0.0], zs[100.0] * own / 100)
        cs = {
            s: CSP(CSPConfig(logit_scale=s), clip, ATTRS, OBJS).eval()(images, pairs)["scores"]
            for s in (100.0, 0.0)
        }
        torch.testing.assert_close(cs[0.0], cs[100.0] * own / 100)
    r = Refiner(_quiet(tau=0.0), clip, ATTRS, OBJS)
    assert float(r.tau) == pytest.approx(own) and "log_tau" not in r.state_dict()
    assert float(Refiner(_quiet(), clip, ATTRS, OBJS).tau) == pytest.approx(100.0)
    with pytest.raises(ConfigError, match="tau"):
        RefinerConfig(tau=-1.0)
    with pytest.raises(ConfigError, match="logit_scale"):
        CSPConfig(logit_scale=-1.0)


# --------------------------------------------------------------------------------------------- CSP
def test_csp_at_init_equals_plain_prompts(clip, images):
    m = CSP(CSPConfig(text_chunk=4), clip, ATTRS, OBJS).eval()
    assert m.vocab.shape == (len(ATTRS) + len(OBJS), C.text_width(clip))
    prompts = [f"a photo of {ATTRS[a]} {OBJS[o]}" for a, o in PAIRS.tolist()]
    with torch.no_grad():
        out = m(images, PAIRS)
        ref = 100 * clip.encode_image(images, normalize=True) @ _plain(clip, prompts).t()
    assert out["scores"].shape == (3, len(PAIRS))
    torch.testing.assert_close(out["scores"], ref, rtol=0, atol=1e-4)
    m.train()  # context length 8 while training: same features (causal), dropout 0.3 on the vocabulary
    assert m.context_length() == 8
    torch.manual_seed(0)
    dropped = m.encode_pairs(PAIRS).comp
    assert not torch.allclose(dropped, m.eval().encode_pairs(PAIRS).comp)


def test_csp_gradients_and_training(clip, images):
    m = CSP(CSPConfig(vocab_dropout=0.0, text_chunk=2), clip, ATTRS, OBJS).train()
    target = torch.tensor([0, 3, 5])
    loss, logs = m.loss(m(images, PAIRS), None, None, target)
    loss.backward()
    assert [n for n, p in m.named_parameters() if p.requires_grad] == ["vocab"]
    assert all(p.grad is None for p in clip.parameters())
    assert m.vocab.grad.abs().sum(1).gt(0).all()  # every attr/obj row appears in PAIRS
    assert set(logs) == {"ce_comp"}
    opt = torch.optim.Adam([m.vocab], lr=1e-2)
    first = float(loss.detach())
    for _ in range(8):
        opt.zero_grad()
        loss, _ = m.loss(m(images, PAIRS), None, None, target)
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.5 * first


# --------------------------------------------------------------------------------------------- Refiner-R
def test_refiner_shapes_per_stage(clip, images):
    cfg = _quiet()
    m = Refiner(cfg, clip, ATTRS, OBJS).eval()
    w, d = C.vision_width(clip), C.embed_dim(clip)
    assert m.queries.shape == (32, w) and m.ctx["comp"].shape == (3, C.text_width(clip))
    with torch.no_grad():
        f = m.encode_images(images, return_attention=True)
        cache = m.encode_pairs(PAIRS)
        out = m.score(f, cache)
    n_tok = 1 + (clip.visual.image_size[0] // clip.visual.patch_size[0]) ** 2
    assert f.image.shape == f.comp.shape == f.state.shape == f.obj.shape == (3, d)
    torch.testing.assert_close(f.comp.norm(dim=-1), torch.ones(3))
    assert f.attention.shape == (3, 32, n_tok)
    torch.testing.assert_close(f.attention.sum(-1), torch.ones(3, 32))
    assert cache.comp.shape == (len(PAIRS), d) and cache.state.shape == (3, d) and cache.obj.shape == (4, d)
    assert out["scores"].shape == out["logits_comp"].shape == out["logits_global"].shape == (3, len(PAIRS))
    assert out["logits_state"].shape == (3, 3) and out["logits_obj"].shape == (3, 4)
    # max query pooling keeps the queries: (B, n, D) features, same logit shapes
    mx = Refiner(_quiet(query_pool="max", n_queries=5), clip, ATTRS, OBJS).eval()
    with torch.no_grad():
        fm = mx.encode_images(images)
        om = mx.score(fm, mx.encode_pairs(PAIRS))
    assert fm.comp.shape == (3, 5, d) and om["scores"].shape == (3, len(PAIRS))
    # hand-computed: max over queries of tau * cos
    torch.testing.assert_close(om["logits_obj"], (100 * fm.obj @ mx.encode_pairs(PAIRS).obj.t()).amax(1))
    # refine once on the final tokens (after ln_post)
    one = Refiner(_quiet(refine_blocks=1), clip, ATTRS, OBJS).eval()
    with torch.no_grad():
        assert one(images, PAIRS)["scores"].shape == (3, len(PAIRS))


def test_refiner_text_and_score_formula(clip, images):
    m = Refiner(_quiet(beta=0.7), clip, ATTRS, OBJS).eval()
    with torch.no_grad():
        out = m(images, PAIRS)
        cache = m.encode_pairs(PAIRS)
    # at init the contexts are "a photo of" and the vocabulary rows are the names' token embeddings
    comp_prompts = [f"a photo of {ATTRS[a]} {OBJS[o]}" for a, o in PAIRS.tolist()]
    torch.testing.assert_close(cache.comp, _plain(clip, comp_prompts), rtol=0, atol=1e-5)
    torch.testing.assert_close(
        cache.state, _plain(clip, [f"a photo of {a}" for a in ATTRS]), rtol=0, atol=1e-5
    )
    torch.testing.assert_close(cache.obj, _plain(clip, [f"a photo of {o}" for o in OBJS]), rtol=0, atol=1e-5)
    g = clip.encode_image(images, normalize=True)
    torch.testing.assert_close(out["logits_global"], 100 * g @ cache.comp.t(), rtol=0, atol=1e-4)
    ps, po = out["logits_state"].softmax(-1), out["logits_obj"].softmax(-1)
    expect = torch.stack(
        [
            0.7 * out["logits_global"][:, k] + 0.3 * out["logits_comp"][:, k] + ps[:, a] * po[:, o]
            for k, (a, o) in enumerate(PAIRS.tolist())
        ],
        1,
    )
    torch.testing.assert_close(out["scores"], expect)
    nog = Refiner(_quiet(global_branch=False), clip, ATTRS, OBJS).eval()
    nog.load_state_dict(m.state_dict())
    with torch.no_grad():
        o2 = nog(images, PAIRS)
    assert "logits_global" not in o2
    torch.testing.assert_close(
        o2["scores"] - o2["logits_comp"], expect - 0.7 * out["logits_global"] - 0.3 * out["logits_comp"]
    )


def test_refiner_gradients_only_to_trainable(clip, images):
    m = Refiner(RefinerConfig(refine_blocks=2, learn_tau=True), clip, ATTRS, OBJS).train()
    assert not clip.training and not any(mod.training for mod in clip.modules())
    out = m(images, PAIRS)
    loss, logs = m.loss(out, torch.tensor([0, 1, 2]), torch.tensor([0, 1, 3]), torch.tensor([0, 1, 5]))
    loss.backward()
    assert set(logs) == {"ce_comp", "ce_global", "ce_state", "ce_obj", "tau"}
    assert all(p.grad is None for p in clip.parameters())
    trainable = {n: p for n, p in m.named_parameters() if p.requires_grad}
    assert not [n for n in trainable if n.startswith("clip.")]
    for name in (
        "queries",
        "vocab",
        "ctx.comp",
        "ctx.state",
        "ctx.obj",
        "log_tau",
        "refine.attn.in_proj_weight",
        "encoders.state.linear1.weight",
        "projs.obj.weight",
        "branch_norm.weight",
    ):
        assert trainable[name].grad is not None and trainable[name].grad.abs().sum() > 0, name


def test_refiner_loss_matches_hand_computation(clip, images):
    m = Refiner(_quiet(w_state=0.25, w_obj=2.0), clip, ATTRS, OBJS).eval()
    with torch.no_grad():
        out = m(images, PAIRS)
    attr, obj, pt = torch.tensor([0, 1, 2]), torch.tensor([0, 1, 3]), torch.tensor([0, 1, 5])
    loss, logs = m.loss(out, attr, obj, pt)
    ce = F.cross_entropy
    expect = (
        ce(out["logits_comp"], pt)
        + ce(out["logits_global"], pt)
        + 0.25 * ce(out["logits_state"], attr)
        + 2.0 * ce(out["logits_obj"], obj)
    )
    torch.testing.assert_close(loss, expect)


@pytest.mark.parametrize("kind", [pytest.param("refiner", marks=pytest.mark.slow), "csp"])
def test_loss_decreases(clip, images, kind):
    torch.manual_seed(0)
    m = (
        Refiner(_quiet(n_queries=8), clip, ATTRS, OBJS)
        if kind == "refiner"
        else CSP(CSPConfig(vocab_dropout=0.0), clip, ATTRS, OBJS)
    ).train()
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-3)
    attr, obj, pt = torch.tensor([0, 1, 2]), torch.tensor([0, 1, 3]), torch.tensor([0, 1, 5])
    losses = []
    for _ in range(6):
        opt.zero_grad()
        loss, _ = m.loss(m(images, PAIRS), attr, obj, pt)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


def test_checkpointed_chunks_same_values_and_grads(clip, images):
    grads, values = [], []
    for ckpt, chunk in ((False, 100), (True, 2)):
        torch.manual_seed(0)
        m = Refiner(_quiet(text_checkpoint=ckpt, text_chunk=chunk), clip, ATTRS, OBJS).train()
        out = m(images, PAIRS)
        loss, _ = m.loss(out, torch.tensor([0, 1, 2]), torch.tensor([0, 1, 3]), torch.tensor([0, 1, 5]))
        loss.backward()
        values.append(out["scores"].detach())
        grads.append((m.vocab.grad.clone(), m.ctx["comp"].grad.clone()))
    torch.testing.assert_close(values[0], values[1], rtol=0, atol=1e-4)
    for a, b in zip(grads[0], grads[1], strict=True):  # summation order differs with the chunking
        torch.testing.assert_close(a, b, rtol=0, atol=1e-3 * float(a.abs().max()))


@pytest.mark.parametrize("kind", ["zeroshot", "csp", "refiner", "refiner_max"])
def test_encode_pairs_and_score_equal_forward(clip, images, kind):
    torch.manual_seed(0)
    m = {
        "zeroshot": lambda: ZeroShotCLIP(ZeroShotCLIPConfig(), clip, ATTRS, OBJS),
        "csp": lambda: CSP(CSPConfig(), clip, ATTRS, OBJS),
        "refiner": lambda: Refiner(RefinerConfig(refine_blocks=2), clip, ATTRS, OBJS),
        "refiner_max": lambda: Refiner(RefinerConfig(refine_blocks=2, query_pool="max"), clip, ATTRS, OBJS),
    }[kind]()
    m.eval()
    with torch.no_grad():
        full = m(images, PAIRS)
        cache = m.encode_pairs(PAIRS, chunk_size=4)
        feats = m.encode_images(images)
        chunked = torch.cat(
            [m.score(feats, cache.chunk(s, s + 4))["scores"] for s in range(0, len(PAIRS), 4)], 1
        )
        direct = m.score(images, cache)
    torch.testing.assert_close(chunked, full["scores"], rtol=1e-5, atol=1e-4)  # 100 x cos: 1e-6 in cos
    with torch.no_grad():  # candidates encoded chunk by chunk, primitives reused from the first chunk's cache
        first = m.encode_pairs(PAIRS[:2])
        parts = [first] + [
            m.encode_pairs(PAIRS[s : s + 2], primitives=first) for s in range(2, len(PAIRS), 2)
        ]
        streamed = torch.cat([m.score(feats, c)["scores"] for c in parts], 1)
    assert all(c.state is first.state for c in parts)
    torch.testing.assert_close(streamed, full["scores"], rtol=1e-5, atol=1e-4)
    for key, value in full.items():
        torch.testing.assert_close(direct[key], value, rtol=1e-5, atol=1e-4)


def test_state_dict_excludes_clip_and_round_trips(clip, images):
    m = Refiner(_quiet(), clip, ATTRS, OBJS).eval()
    sd = m.state_dict()
    assert sd and not [k for k in sd if k.startswith("clip.")]
    assert {"queries", "vocab", "ctx.comp"} <= set(sd)
    torch.manual_seed(5)
    other = Refiner(_quiet(), clip, ATTRS, OBJS).eval()
    other.load_state_dict(sd)  # strict: the frozen CLIP is not expected in checkpoints
    with torch.no_grad():
        torch.testing.assert_close(other(images, PAIRS)["scores"], m(images, PAIRS)["scores"])
    with pytest.raises(RuntimeError, match="queries"):
        other.load_state_dict({k: v for k, v in sd.items() if k != "queries"})


def test_adapters_start_at_identity_and_train(clip, images):
    m = Refiner(_quiet(adapters=True, adapter_dim=4), clip, ATTRS, OBJS).train()
    with torch.no_grad():
        g_ref, tok_ref = C.encode_image_tokens(clip, images, 2)
        g, tok = m._visual_with_adapters(images)
    torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-5)
    for a, b in zip(tok, tok_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    loss, _ = m.loss(
        m(images, PAIRS), torch.tensor([0, 1, 2]), torch.tensor([0, 1, 3]), torch.tensor([0, 1, 5])
    )
    loss.backward()
    assert m.adapters[0][0].up.weight.grad.abs().sum() > 0  # first block's attention adapter
    assert all(p.grad is None for p in clip.parameters())


def test_registry_and_errors(clip):
    from unseen.registry import create_model

    m = create_model(
        "refiner",
        {"n_queries": 4, "refine_blocks": 1},
        setting="compositional",
        clip_model=clip,
        attr_names=ATTRS,
        obj_names=OBJS,
    )
    assert isinstance(m, Refiner) and m.queries.shape[0] == 4
    assert isinstance(
        create_model("csp", None, setting="compositional", clip_model=clip, attr_names=ATTRS, obj_names=OBJS),
        CSP,
    )
    with pytest.raises(ConfigError, match="refine_blocks"):
        Refiner(RefinerConfig(refine_blocks=3), clip, ATTRS, OBJS)  # the test CLIP has 2 visual blocks
    with pytest.raises(ConfigError, match="branch_heads"):
        Refiner(RefinerConfig(refine_blocks=2, branch_heads=7), clip, ATTRS, OBJS)
    for bad in ({"query_pool": "sum"}, {"beta": 1.5}, {"vocab_dropout": 1.0}):
        with pytest.raises(ConfigError):
            RefinerConfig(**bad)
    with pytest.raises(ConfigError, match="template"):
        ZeroShotCLIPConfig(template="a photo of {obj}")
    m = CSP(CSPConfig(), clip, ATTRS, OBJS)
    with pytest.raises(ValueError, match="out of range"):
        m.encode_pairs(torch.tensor([[0, 4]]))
    with pytest.raises(ValueError, match=r"\(K, 2\)"):
        m.encode_pairs(torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="unique"):
        CSP(CSPConfig(), clip, ["red", "red"], OBJS)


def test_hybrid_tiny_clip_stem_pooling_and_reload(tmp_path):
    """`unseen-tiny-clip` (the embedded benchmark's CLIP): CNN patch embedding, 8x8 token grid, patch-mean pooling;
    its weights round-trip through a safetensors file; Refiner-R runs on it."""
    from unseen.io import save_safetensors

    torch.manual_seed(0)
    m = C.create_clip("unseen-tiny-clip")
    assert isinstance(m.visual.conv1, C.ConvStem) and m.visual.pool_type == "avg"
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        g, tokens = C.encode_image_tokens(m, x, 2)
        assert m.visual.conv1(x).shape == (2, C.vision_width(m), 8, 8)
        assert [t.shape for t in tokens] == [(2, 65, C.vision_width(m))] * 2
        # pooled embedding = proj(mean over the patch tokens of ln_post(last block)), the CLS token left out
        torch.testing.assert_close(
            g, m.visual.ln_post(tokens[-1])[:, 1:].mean(1) @ m.visual.proj, rtol=0, atol=1e-5
        )
        torch.testing.assert_close(g, m.encode_image(x), rtol=0, atol=1e-6)
    path = tmp_path / "tiny.safetensors"
    save_safetensors(path, m.state_dict())
    again = C.create_clip("unseen-tiny-clip", weights=path)
    with torch.no_grad():
        torch.testing.assert_close(again.encode_image(x), m.encode_image(x), rtol=0, atol=0)
        out = Refiner(_quiet(refine_blocks=4), again, ATTRS, OBJS).eval()(x, PAIRS)
    assert out["scores"].shape == (2, len(PAIRS))


# --------------------------------------------------------------------------------------------- ablation switch
def _params_before(m, first_absent: str) -> dict:
    """The state entries created before ``first_absent`` (module creation order = state_dict order)."""
    out = {}
    for k, v in m.state_dict().items():
        if k.startswith(first_absent):
            break
        out[k] = v
    return out


def test_refiner_default_builds_every_branch_in_order(clip):
    torch.manual_seed(0)
    m = Refiner(_quiet(), clip, ATTRS, OBJS)
    assert RefinerConfig().branches == ["state", "obj", "comp"]
    assert list(m.encoders) == list(m.projs) == ["state", "obj", "comp"]
    assert sorted(m.ctx) == ["comp", "obj", "state"]  # (a ParameterDict built from a dict sorts its keys)
    top = list(dict.fromkeys(k.split(".")[0] for k in m.state_dict()))
    assert top == ["queries", "vocab", "refine", "encoders", "branch_norm", "projs", "ctx"]


def test_refiner_without_a_branch(clip, images):
    torch.manual_seed(0)
    full = Refiner(_quiet(beta=0.7), clip, ATTRS, OBJS).eval()
    torch.manual_seed(0)
    m = Refiner(_quiet(beta=0.7, branches=["obj", "comp"]), clip, ATTRS, OBJS).eval()
    assert list(m.encoders) == list(m.projs) == ["obj", "comp"] and sorted(m.ctx) == ["comp", "obj"]
    # what is built before the first missing module has the default's initial weights
    same = _params_before(full, "encoders.state")
    for k, v in same.items():
        assert torch.equal(v, m.state_dict()[k]), k
    with torch.no_grad():
        cache = m.encode_pairs(PAIRS)
        out = m(images, PAIRS)
    assert cache.state is None and cache.obj is not None
    assert "logits_state" not in out and {"logits_comp", "logits_obj", "logits_global"} <= set(out)
    po = out["logits_obj"].softmax(-1)
    expect = 0.7 * out["logits_global"] + 0.3 * out["logits_comp"] + po[:, PAIRS[:, 1]]
    torch.testing.assert_close(out["scores"], expect)
    attr, obj, pt = torch.tensor([0, 1, 2]), torch.tensor([0, 1, 3]), torch.tensor([0, 1, 5])
    loss, logs = m.loss(out, attr, obj, pt)
    ce = F.cross_entropy
    torch.testing.assert_close(
        loss, ce(out["logits_comp"], pt) + ce(out["logits_global"], pt) + 0.5 * ce(out["logits_obj"], obj)
    )
    assert set(logs) == {"ce_comp", "ce_obj", "ce_global"}
    # reusing the primitives of an earlier cache (chunked evaluation) gives the same scores
    with torch.no_grad():
        again = m.score(m.encode_images(images), m.encode_pairs(PAIRS[:2], primitives=cache))
    torch.testing.assert_close(again["scores"], out["scores"][:, :2])

    # no composition branch: the pair score is the global branch's, the composition text context stays
    nocomp = Refiner(_quiet(branches=["state", "obj"]), clip, ATTRS, OBJS).eval()
    assert "comp" not in nocomp.encoders and "comp" in nocomp.ctx
    with torch.no_grad():
        o = nocomp(images, PAIRS)
    assert "logits_comp" not in o
    ps, po = o["logits_state"].softmax(-1), o["logits_obj"].softmax(-1)
    torch.testing.assert_close(o["scores"], o["logits_global"] + ps[:, PAIRS[:, 0]] * po[:, PAIRS[:, 1]])
    loss, logs = nocomp.loss(o, attr, obj, pt)
    assert set(logs) == {"ce_state", "ce_obj", "ce_global"}
    # trained: the remaining branches get gradients, and only from the remaining terms
    nocomp.train()
    loss, _ = nocomp.loss(nocomp(images, PAIRS), attr, obj, pt)
    loss.backward()
    assert nocomp.projs["state"].weight.grad is not None and nocomp.ctx["comp"].grad is not None


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"branches": []}, "branches"),
        ({"branches": ["comp", "comp"]}, "branches"),
        ({"branches": ["attr", "comp"]}, "branches"),
        ({"branches": ["state", "obj"], "global_branch": False}, "global_branch"),
    ],
)
def test_refiner_branches_are_checked_at_config_load(kw, match):
    with pytest.raises(ConfigError, match=match):
        RefinerConfig(**kw)
