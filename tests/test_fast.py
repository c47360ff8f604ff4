"""The GPU decode path (``annotated_llama.fast``) against the readable model it is built on.

On CPU in float32: static-cache prefill + decode logits equal the reference model's (max abs < 1e-4), greedy
tokens equal ``al.generate``'s, the compiled one-token step equals the eager one, for grouped-query and
multi-head attention. On CUDA (skipped without a GPU) the same in bf16, with a looser tolerance: logits within
5e-2 relative (max abs difference / max abs logit) and identical greedy tokens for the first steps.
"""

import time

import pytest
import torch

import annotated_llama as al
from annotated_llama.fast import FastLlama, rope, sample_on_device
from annotated_llama.generate import generate_ids

TOL = 1e-4  # float32, max abs logit difference
BF16_REL_TOL = 5e-2  # bf16 on CUDA: max abs difference relative to the largest reference logit
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")

SMALL = {  # (n_heads, n_kv_heads): grouped-query, multi-head, multi-query
    "gqa": dict(dim=128, n_heads=8, n_kv_heads=2, hidden_dim=344),
    "mha": dict(dim=64, n_heads=4, n_kv_heads=4, hidden_dim=192),
    "mqa": dict(dim=64, n_heads=4, n_kv_heads=1, hidden_dim=172, tie_word_embeddings=True),
}


def small_model(kind: str, device="cpu", dtype=torch.float32, seed: int = 0) -> al.Transformer:
    torch.manual_seed(seed)
    args = al.ModelArgs(n_layers=2, vocab_size=256, max_seq_len=96, rope_theta=10000.0, **SMALL[kind])
    model = al.Transformer(args)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # random gains, so a wrong norm would show
                p.add_(0.1 * torch.randn_like(p))
    return model.to(device, dtype).eval().requires_grad_(False)


def reference_then_fast(model, tokens, split, **kw):
    """Reference logits of one full pass, and the fast path's: prefill tokens[:, :split], then one by one."""
    with torch.no_grad():
        want = model(tokens)[:, split - 1:]  # [batch, seq - split + 1, vocab]
    fast = FastLlama(model, max_batch_size=tokens.shape[0], **kw)
    got = [fast.prefill(tokens[:, :split])]
    pos = torch.tensor([split], device=tokens.device)
    for i in range(split, tokens.shape[1]):
        got.append(fast.decode_step(tokens[:, i], pos).clone())
        pos += 1
    return want, torch.stack(got, dim=1)


@pytest.mark.parametrize("kind", sorted(SMALL))
@pytest.mark.parametrize("fuse", [True, False])
def test_static_cache_logits_equal_reference(kind, fuse):
    model = small_model(kind)
    torch.manual_seed(1)
    tokens = torch.randint(0, 256, (2, 30))
    want, got = reference_then_fast(model, tokens, split=9, max_seq_len=48, fuse=fuse)
    diff = (got - want).abs().max().item()
    assert diff < TOL, f"{kind} fuse={fuse}: max abs logit difference {diff:.2e}"


def test_cache_sized_per_request_and_limits():
    model = small_model("gqa")
    fast = FastLlama(model)  # max_seq_len=None: sized per request, rounded up, capped by the context (96)
    fast.prefill(torch.tensor([[1, 2, 3]]))
    assert fast.cache_len_alloc == 96 and fast.k_cache[0].shape == (1, 2, 96, 16)
    assert fast.fuse == CUDA  # fused projections by default on CUDA only (no gain measured on a CPU)
    fixed = FastLlama(model, max_seq_len=8)
    assert fixed.k_cache[0].shape == (1, 2, 8, 16)  # [batch, n_kv_heads, max_seq, head_dim]
    assert fixed.k_cache[0].dtype == model.dtype
    with pytest.raises(ValueError, match="static cache holds 8"):
        fixed.generate([1, 2, 3, 4, 5], max_new_tokens=6)
    with pytest.raises(ValueError, match="max_seq_len must be in 1..96"):
        FastLlama(model, max_seq_len=200)


def test_weights_are_shared_not_copied():
    model = small_model("mqa")
    before = model(torch.tensor([[5, 6, 7]]))
    fast = FastLlama(model, max_seq_len=16, fuse=True)
    block, w = model.layers[1], fast.layers[1]
    assert fast.tok_embeddings.data_ptr() == model.tok_embeddings.weight.data_ptr() == fast.output.data_ptr()
    assert w["wo"].data_ptr() == block.attention.wo.weight.data_ptr()
    # the model's wq/wk/wv and w1/w3 now are row slices of the fused tensors: one copy of the weights
    assert block.attention.wq.weight.data_ptr() == w["wqkv"].data_ptr()
    assert block.feed_forward.w3.weight.data_ptr() == w["w13"][block.feed_forward.w1.weight.shape[0]:].data_ptr()
    assert torch.equal(model(torch.tensor([[5, 6, 7]])), before)  # and compute what they computed before
    again = FastLlama(model, max_seq_len=16, fuse=True)  # a second FastLlama reuses the fused tensors
    assert again.layers[1]["wqkv"] is w["wqkv"] and again.layers[0]["w13"] is fast.layers[0]["w13"]


def test_rope_matches_the_complex_form():
    torch.manual_seed(2)
    x = torch.randn(2, 5, 3, 16)
    freqs = al.model.precompute_freqs_cis(16, 5, 10000.0)
    want = al.model.apply_rotary_emb(x, freqs)
    assert (rope(x, freqs.real, freqs.imag) - want).abs().max().item() < 1e-6


@pytest.mark.parametrize("kind", ["gqa", "mha"])
def test_greedy_tokens_equal_reference_generation(kind):
    model = small_model(kind)
    prompt = [3, 17, 42, 99, 7]
    want = list(generate_ids(model, prompt, 24))
    assert FastLlama(model, fuse=True).generate(prompt, 24) == want
    assert FastLlama(model, max_seq_len=40, fuse=False).generate(prompt, 24) == want


def test_batch_generation_equals_one_by_one():
    model = small_model("gqa")
    prompts = torch.tensor([[1, 2, 3, 4], [9, 8, 7, 6], [50, 60, 70, 80]])
    fast = FastLlama(model, max_batch_size=3, max_seq_len=32)
    rows = fast.generate(prompts, 10)
    assert rows == [FastLlama(model, max_seq_len=32).generate(p.tolist(), 10) for p in prompts]


def test_stop_ids_cut_the_result():
    model = small_model("gqa")
    full = FastLlama(model).generate([1, 2, 3], 12)
    stop = full[4]
    cut = FastLlama(model).generate([1, 2, 3], 12, stop_ids={stop})
    assert cut == full[:full.index(stop)]


def test_sampling_on_device():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]]).repeat(4000, 1)
    g = torch.Generator().manual_seed(0)
    ids = sample_on_device(logits, temperature=1.0, generator=g)
    freq = torch.bincount(ids, minlength=4).float() / len(ids)
    assert (freq - torch.softmax(logits[0], -1)).abs().max().item() < 0.03  # the exponential race is fair
    top = sample_on_device(logits, temperature=1.0, top_p=0.5, generator=g)
    assert torch.all(top == 3)  # the top token alone holds 64% > 0.5
    assert torch.equal(sample_on_device(logits[:3], 0.0), torch.tensor([3, 3, 3]))
    model = small_model("gqa")
    a = FastLlama(model).generate([1, 2, 3], 16, temperature=0.8, top_p=0.9, seed=7)
    b = FastLlama(model).generate([1, 2, 3], 16, temperature=0.8, top_p=0.9, seed=7)
    assert a == b


@pytest.mark.parametrize("kind", ["gqa", pytest.param("mha", marks=pytest.mark.slow)])
def test_compiled_step_equals_eager_step(kind):
    """torch.compile (inductor's C++ backend on CPU) of the one-token step: about 40 s per small model on two
    busy cores; the 30-layer bundled model takes minutes (marked slow below)."""
    model = small_model(kind)
    torch.manual_seed(3)
    tokens = torch.randint(0, 256, (1, 20))
    eager_fast = FastLlama(model, max_seq_len=32, fuse=True)
    compiled = FastLlama(model, max_seq_len=32, compile=True, fuse=True)
    eager, comp = [eager_fast.prefill(tokens[:, :5])], [compiled.prefill(tokens[:, :5])]
    for i in range(5, 20):
        eager.append(eager_fast.decode_step(tokens[:, i], i))
        comp.append(compiled.decode_step(tokens[:, i], i).clone())
    assert (torch.stack(comp) - torch.stack(eager)).abs().max().item() < TOL
    assert compiled.generate([1, 2, 3], 12) == eager_fast.generate([1, 2, 3], 12)


# --- the bundled model --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bundled():
    return al.load("smollm2-135m", device="cpu", dtype="float32")


@pytest.mark.slow
def test_bundled_greedy_equals_generate(bundled):
    model, tok = bundled
    prompt = tok.encode("The capital of France is")
    want = list(generate_ids(model, prompt, 20))
    fast = FastLlama(model, max_seq_len=64, fuse=True)
    assert fast.generate(prompt, 20) == want
    assert tok.decode(want).startswith(" Paris")
    with torch.inference_mode():  # (generate_ids left inference tensors in the model's cache)
        tokens = torch.tensor([prompt + want])
        ref = model(tokens)[0, len(prompt) - 1:]
    got = [fast.prefill(tokens[:, :len(prompt)])[0]]
    got += [fast.decode_step(tokens[:, i], i)[0] for i in range(len(prompt), tokens.shape[1])]
    assert (torch.stack(got) - ref).abs().max().item() < TOL


@pytest.mark.slow
@pytest.mark.skipif(CUDA, reason="the CUDA variant below covers compile on a GPU")
def test_bundled_compiled_on_cpu(bundled):
    """Minutes on two cores: the 30-layer step is compiled once."""
    model, tok = bundled
    prompt = tok.encode("The capital of France is")
    start = time.perf_counter()
    fast = FastLlama(model, max_seq_len=64, compile=True)
    assert fast.generate(prompt, 20) == list(generate_ids(model, prompt, 20))
    print(f"compile + 20 tokens: {time.perf_counter() - start:.0f} s elapsed")


# --- CUDA, bf16 ---------------------------------------------------------------------------------------------
def relative_diff(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).abs().max() / want.float().abs().max()).item()


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["gqa", "mha"])
@pytest.mark.parametrize("compile", [False, True])
def test_cuda_bf16_small(kind, compile):
    model = small_model(kind, device="cuda", dtype=torch.bfloat16)
    torch.manual_seed(1)
    tokens = torch.randint(0, 256, (2, 30), device="cuda")
    want, got = reference_then_fast(model, tokens, split=9, max_seq_len=48, compile=compile)
    assert relative_diff(got, want) < BF16_REL_TOL


@needs_cuda
@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.parametrize("compile", [False, True])
def test_cuda_bf16_bundled(compile):
    """bf16 roundings differ between the two paths, so greedy paths may part after a near-tie: the first
    10 tokens must agree, and the logits stay within 5e-2 relative."""
    model, tok = al.load("smollm2-135m", device="cuda", dtype="bfloat16")
    prompt = tok.encode("The capital of France is")
    want = list(generate_ids(model, prompt, 20))
    fast = FastLlama(model, max_seq_len=64, compile=compile)
    got = fast.generate(prompt, 20)
    assert got[:10] == want[:10]
    tokens = torch.tensor([prompt + want], device="cuda")
    with torch.no_grad():
        ref = model(tokens)[0, len(prompt) - 1:]
    steps = [fast.prefill(tokens[:, :len(prompt)])[0]]
    steps += [fast.decode_step(tokens[:, i], i)[0].clone() for i in range(len(prompt), tokens.shape[1])]
    assert relative_diff(torch.stack(steps), ref) < BF16_REL_TOL
