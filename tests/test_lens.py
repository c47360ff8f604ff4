"""The inspection API (annotated_llama.lens): cached activations against the same quantities recomputed by
hand from the weights, hooks that leave nothing behind, the names filter, and the logit lens."""

import math

import pytest
import torch
import torch.nn.functional as F

import annotated_llama as al
from annotated_llama import lens

TOL = 1e-5


def small_model(n_kv_heads=2, tied=False, seed=0):
    torch.manual_seed(seed)
    args = al.ModelArgs(dim=64, n_layers=3, n_heads=4, n_kv_heads=n_kv_heads, vocab_size=97, hidden_dim=96,
                        max_seq_len=64, rope_theta=10000.0, tie_word_embeddings=tied)
    model = al.Transformer(args).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):  # random gains, so a wrong norm would show
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif p.dim() == 2:
                p.normal_(0, 0.3)
    return model


@pytest.fixture(scope="module")
def model():
    return small_model()


@pytest.fixture(scope="module")
def tokens():
    torch.manual_seed(1)
    return torch.randint(0, 97, (2, 11))


@pytest.fixture(scope="module")
def run(model, tokens):
    return lens.run_with_cache(model, tokens)


def hooks_left(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_logits_unchanged_and_all_names_present(model, tokens, run):
    logits, cache = run
    with torch.no_grad():
        assert torch.equal(logits, model(tokens))
    assert list(cache) == lens.hook_names(model)
    assert hooks_left(model) == 0


def test_residual_stream_by_hand(model, tokens, run):
    _, cache = run
    with torch.no_grad():
        h = model.tok_embeddings(tokens)
        assert torch.equal(cache["embed"], h)
        freqs = model.freqs_cis(h.device)[: tokens.shape[1]]
        for i, layer in enumerate(model.layers):
            assert torch.equal(cache[f"resid_pre.{i}"], h)
            a = layer.attention_norm(h)
            attn_out = layer.attention(a, 0, freqs)
            mid = h + attn_out
            ff = layer.feed_forward
            m = layer.ffn_norm(mid)
            gate, up = ff.w1(m), ff.w3(m)
            act = F.silu(gate) * up
            h = mid + ff.w2(act)
            expected = {"attn_norm": a, "attn.out": attn_out, "resid_mid": mid, "mlp_norm": m, "mlp.gate": gate,
                        "mlp.up": up, "mlp.act": act, "mlp.out": ff.w2(act), "resid_post": h}
            for kind, value in expected.items():
                diff = (cache[f"{kind}.{i}"] - value).abs().max().item()
                assert diff < TOL, f"{kind}.{i}: {diff:.1e}"


def test_last_residual_through_norm_and_output_is_logits(model, run):
    logits, cache = run
    last = cache[f"resid_post.{model.args.n_layers - 1}"]
    with torch.no_grad():
        # RMSNorm written out: x / sqrt(mean(x²) + eps) * g, then the unembedding
        normed = last * torch.rsqrt(last.pow(2).mean(-1, keepdim=True) + model.args.norm_eps) * model.norm.weight
        assert (normed - cache["final_norm"]).abs().max().item() < TOL
        assert (normed @ model.output.weight.T - logits).abs().max().item() < 1e-4


def manual_q_k(model, cache, i, seq):
    """q/k after RoPE from the attention input, with RoPE written out as a 2x2 rotation of each pair."""
    attn, a = model.layers[i].attention, cache[f"attn_norm.{i}"]
    hd = attn.head_dim
    j = torch.arange(hd // 2, dtype=torch.float64)
    inv_freq = model.args.rope_theta ** (-2 * j / hd)
    angle = torch.arange(seq, dtype=torch.float64)[:, None] * inv_freq  # [seq, hd/2]
    cos, sin = angle.cos()[None, :, None], angle.sin()[None, :, None]

    def rope(x, heads):  # x [b, s, heads*hd]
        x = x.double().view(x.shape[0], seq, heads, hd // 2, 2)
        x0, x1 = x[..., 0], x[..., 1]
        out = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)
        return out.flatten(3).transpose(1, 2).float()  # [b, heads, s, hd]

    with torch.no_grad():
        return rope(attn.wq(a), attn.n_heads), rope(attn.wk(a), attn.n_kv_heads)


def test_q_k_after_rope_by_hand(model, tokens, run):
    _, cache = run
    for i in range(model.args.n_layers):
        q, k = manual_q_k(model, cache, i, tokens.shape[1])
        assert cache[f"attn.q.{i}"].shape == (2, 4, 11, 16) and cache[f"attn.k.{i}"].shape == (2, 2, 11, 16)
        assert (cache[f"attn.q.{i}"] - q).abs().max().item() < 1e-4
        assert (cache[f"attn.k.{i}"] - k).abs().max().item() < 1e-4


def test_attention_probabilities_by_hand(model, tokens, run):
    _, cache = run
    seq = tokens.shape[1]
    for i in range(model.args.n_layers):
        q, k = manual_q_k(model, cache, i, seq)
        k = k.repeat_interleave(2, dim=1)  # 4 query heads share 2 KV heads: head h reads KV head h // 2
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        mask = torch.full((seq, seq), float("-inf")).triu(1)
        expected = torch.softmax(scores + mask, dim=-1)
        probs = cache[f"attn.probs.{i}"]
        assert probs.shape == (2, 4, seq, seq) and probs.dtype == torch.float32
        assert (probs - expected).abs().max().item() < 1e-5
        assert torch.allclose(probs.sum(-1), torch.ones(2, 4, seq), atol=1e-6)
        assert torch.all(probs.triu(1) == 0)  # causal: nothing on future keys
        assert torch.allclose(torch.softmax(cache[f"attn.scores.{i}"], -1), probs, atol=1e-6)
        # and they reproduce the attention output: wo(probs @ v)
        v = cache[f"attn.v.{i}"].repeat_interleave(2, dim=1)
        z = (probs @ v).transpose(1, 2).reshape(2, seq, -1)
        with torch.no_grad():
            out = model.layers[i].attention.wo(z)
        assert (out - cache[f"attn.out.{i}"]).abs().max().item() < 1e-4


def test_attention_with_kv_cache_matches_full_pass(model, tokens):
    """Decoding the last token with start_pos > 0 gives the last row of the full pass's attention.

    The step runs on a model that has never held a cache (same weights): on the shared model, the full pass
    would have left the right key of position 10 in the cache, so a step that does not write its own key,
    or a lens that reads the whole cache instead of the positions written, would still pass. Here the cache
    is made for the 10-token prompt and grows for the step."""
    _, full = lens.run_with_cache(model, tokens, names="attn.probs.*")
    cold = small_model()
    assert all(torch.equal(a, b) for a, b in zip(cold.state_dict().values(), model.state_dict().values()))
    lens.run_with_cache(cold, tokens[:, :-1], names="attn.probs.1")
    _, step = lens.run_with_cache(cold, tokens[:, -1:], names=["attn.probs.1", "attn.q.1"], start_pos=10)
    assert cold.layers[1].attention.cache.capacity > 11  # it grew: slots past position 10 exist, unwritten
    assert step["attn.probs.1"].shape == (2, 4, 1, 11)
    assert (step["attn.probs.1"][:, :, 0] - full["attn.probs.1"][:, :, -1]).abs().max().item() < 1e-5
    assert hooks_left(model) == 0 and hooks_left(cold) == 0


def test_hooks_removed_after_exception(model, tokens):
    with pytest.raises(RuntimeError, match="boom"):
        with lens.capture(model, ["resid_post.*", "attn.probs.*", "mlp.act.0", "final_norm"]):
            assert hooks_left(model) > 0
            raise RuntimeError("boom")
    assert hooks_left(model) == 0
    # an exception inside the forward pass (raised by a hook of ours, from layer 1's MLP)
    def fail(module, args, out):
        raise RuntimeError("boom inside forward")
    with pytest.raises(RuntimeError, match="boom inside forward"):
        with lens.capture(model, None):
            handle = model.layers[1].feed_forward.register_forward_hook(fail)
            try:
                model(tokens)
            finally:
                handle.remove()
    assert hooks_left(model) == 0
    with pytest.raises(ValueError, match="token id"):  # the model's own input check, inside run_with_cache
        lens.run_with_cache(model, tokens + 1000)
    assert hooks_left(model) == 0


def test_names_filter_stores_only_what_was_asked(model, tokens):
    _, cache = lens.run_with_cache(model, tokens, names=["resid_post.2", "attn.probs.0", "mlp.act.*"])
    assert sorted(cache) == ["attn.probs.0", "mlp.act.0", "mlp.act.1", "mlp.act.2", "resid_post.2"]
    nbytes = sum(t.numel() * t.element_size() for t in cache.values())
    b, s, a = 2, 11, model.args
    assert nbytes == 4 * (b * s * a.dim + b * a.n_heads * s * s + 3 * b * s * a.ffn_dim)
    _, only_q = lens.run_with_cache(model, tokens, names="attn.q.1")
    assert list(only_q) == ["attn.q.1"]
    with pytest.raises(ValueError, match="matches no activation"):
        lens.run_with_cache(model, tokens, names=["resid_post.3"])  # the model has layers 0..2
    assert hooks_left(model) == 0


def test_probs_computed_only_on_request(model, tokens, monkeypatch):
    calls = []
    real = lens.attention_probabilities
    monkeypatch.setattr(lens, "attention_probabilities", lambda *a, **k: calls.append(1) or real(*a, **k))
    lens.run_with_cache(model, tokens, names=["resid_post.*", "attn.q.*"])
    assert calls == []
    lens.run_with_cache(model, tokens, names=["attn.probs.1"])
    assert calls == [1]


def test_logit_lens_last_layer_is_the_model(model, tokens):
    target = int(tokens[0, 3])
    result = lens.logit_lens(model, tokens[0], target=target, k=4)
    n = model.args.n_layers
    assert result.labels == ["embed"] + [f"layer {i}" for i in range(n)]
    assert result.top_ids.shape == (n + 1, 11, 4) and result.target_rank.shape == (n + 1, 11)
    with torch.no_grad():
        probs = torch.softmax(model(tokens[:1])[0], dim=-1)
    top_p, top_i = probs.topk(4, dim=-1)
    assert torch.equal(result.top_ids[-1], top_i)
    assert (result.top_probs[-1] - top_p).abs().max().item() < 1e-6
    assert (result.target_prob[-1] - probs[:, target]).abs().max().item() < 1e-6
    assert torch.equal(result.target_rank[-1], (probs > probs[:, target:target + 1]).sum(-1) + 1)
    # top probabilities are sorted and the target's rank is 1 exactly where it is the top token
    assert torch.all(result.top_probs[..., :-1] >= result.top_probs[..., 1:])
    assert torch.equal(result.target_rank == 1, result.top_ids[..., 0] == target)
    first = result.first_layer_ranked_first(position=-1)
    assert first is None or result.target_rank[first, -1] == 1


def test_logit_lens_normalises_each_layer_by_its_own_rms(model, tokens):
    _, cache = lens.run_with_cache(model, tokens[:1], names="resid_post.0")
    x = cache["resid_post.0"][0]
    logits = lens.decode_residual(model, x)
    # scaling the state leaves its reading unchanged (up to eps): its own RMS is divided out
    assert (lens.decode_residual(model, 10 * x) - logits).abs().max().item() < 1e-3
    result = lens.logit_lens(model, tokens[:1], k=1)
    assert torch.equal(result.top_ids[1, :, 0], logits.argmax(-1))
    assert result.target_rank is None
    with pytest.raises(ValueError, match="one sequence"):
        lens.logit_lens(model, tokens)


@pytest.mark.parametrize("n_kv_heads,tied", [(4, True), (1, False)])
def test_other_attention_layouts(n_kv_heads, tied, tokens):
    model = small_model(n_kv_heads=n_kv_heads, tied=tied, seed=3)
    _, cache = lens.run_with_cache(model, tokens, names=["attn.probs.*", "attn_norm.*"])
    for i in range(model.args.n_layers):
        q, k = manual_q_k(model, cache, i, tokens.shape[1])
        k = k.repeat_interleave(4 // n_kv_heads, dim=1)
        mask = torch.full((11, 11), float("-inf")).triu(1)
        expected = torch.softmax(q @ k.transpose(-2, -1) / 4.0 + mask, dim=-1)
        assert (cache[f"attn.probs.{i}"] - expected).abs().max().item() < 1e-5
    assert hooks_left(model) == 0


@pytest.mark.slow
def test_bundled_model_logit_lens_and_probs():
    from annotated_llama.reference import transformers_model

    model, tok = al.load("smollm2-135m", device="cpu", dtype=torch.float32)
    ids = tok.encode("The capital of France is")
    paris = tok.encode(" Paris")[0]
    result = lens.logit_lens(model, ids, target=paris)
    assert int(result.top_ids[-1, -1, 0]) == paris  # the model's own answer is " Paris"
    assert result.first_layer_ranked_first() is not None
    # attention weights against transformers' eager attention on the same weights
    hf = transformers_model("smollm2-135m", device=model.device, dtype=model.dtype)
    hf.config._attn_implementation = "eager"
    t = torch.tensor([ids])
    with torch.no_grad():
        ref = hf(t, output_attentions=True, output_hidden_states=True)
    _, cache = lens.run_with_cache(model, t, names=["attn.probs.*", "resid_post.*"])
    for i in (0, 15, 29):
        assert (cache[f"attn.probs.{i}"] - ref.attentions[i]).abs().max().item() < 1e-4
        # hidden_states[i + 1] is the residual stream after block i (the last one is after the final norm)
        if i < 29:
            assert (cache[f"resid_post.{i}"] - ref.hidden_states[i + 1]).abs().max().item() < 1e-3
    assert hooks_left(model) == 0
