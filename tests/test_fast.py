"""The GPU decode path (``annotated_llama.fast``) against the readable model it is built on.

On CPU in float32: static-cache prefill + decode logits equal the reference model's (max abs < 1e-4), greedy
tokens equal ``al.generate``'s, the compiled one-token step equals the eager one, for grouped-query, multi-head
and multi-query attention. On CPU as well, the rules the GPU path depends on: the cache only grows and the
compiled step is compiled a bounded number of times; no attention call combines a mask with ``enable_gqa``
(which no fused CUDA kernel takes); positions are checked on the host; sampling leaves the global random state
alone; bf16 and fp16 runs stay within an error model measured against float32. On CUDA (skipped without a GPU)
the same in bf16, every attention call on a fused kernel, tokens compared up to the first near tie.
"""

import time

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from torch._dynamo.testing import CompileCounter

import annotated_llama as al
from annotated_llama import fast as fast_module
from annotated_llama.fast import MAX_CACHE_LENGTHS, FastLlama, cache_bucket, cache_lengths, rope, sample_on_device
from annotated_llama.generate import generate_ids

TOL = 1e-4  # float32, max abs logit difference
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
UNIT_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}  # u: half the gap between 1 and the next number

SMALL = {  # (n_heads, n_kv_heads): grouped-query, multi-head, multi-query
    "gqa": dict(dim=128, n_heads=8, n_kv_heads=2, hidden_dim=344),
    "mha": dict(dim=64, n_heads=4, n_kv_heads=4, hidden_dim=192),
    "mqa": dict(dim=64, n_heads=4, n_kv_heads=1, hidden_dim=172, tie_word_embeddings=True),
}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Compiled steps share one code object (``FastLlama._decode``): without a reset, the graphs of earlier
    tests would count towards the recompile limit of later ones, and CompileCounter's counts would mix."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def small_model(kind: str, device="cpu", dtype=torch.float32, seed: int = 0, context: int = 96) -> al.Transformer:
    torch.manual_seed(seed)
    args = al.ModelArgs(n_layers=2, vocab_size=256, max_seq_len=context, rope_theta=10000.0, **SMALL[kind])
    model = al.Transformer(args)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # random gains, so a wrong norm would show
                p.add_(0.1 * torch.randn_like(p))
    return model.to(device, dtype).eval().requires_grad_(False)


def teacher_forced(fast: FastLlama, tokens: torch.Tensor, split: int) -> torch.Tensor:
    """The fast path's logits for positions split - 1 .. seq - 1, fed ``tokens``: prefill tokens[:, :split], then
    one token at a time (positions as a device tensor, as ``generate`` does): [batch, seq - split + 1, vocab]."""
    got = [fast.prefill(tokens[:, :split])]
    pos = torch.tensor([split], device=tokens.device)
    for i in range(split, tokens.shape[1]):
        got.append(fast.decode_step(tokens[:, i], pos).clone())  # clone: a CUDA graph reuses its output
        pos += 1
    return torch.stack(got, dim=1)


def reference_then_fast(model, tokens, split, **kw):
    """Reference logits of one full pass, and the fast path's (``teacher_forced``)."""
    with torch.no_grad():
        want = model(tokens)[:, split - 1:]  # [batch, seq - split + 1, vocab]
    return want, teacher_forced(FastLlama(model, max_batch_size=tokens.shape[0], **kw), tokens, split)


def relative_diff(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want|, in float32."""
    return ((got.float() - want.float()).abs().max() / want.float().abs().max()).item()


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
    fast = FastLlama(model)  # max_seq_len=None: sized per request from cache_lengths(96) == [96]
    fast.prefill(torch.tensor([[1, 2, 3]]))
    assert fast.cache_len_alloc == 96 and fast.k_cache[0].shape == (1, 2, 96, 16)
    assert fast.fuse == (model.device.type == "cuda")  # fused projections by default on CUDA only
    fixed = FastLlama(model, max_seq_len=8)
    assert fixed.k_cache[0].shape == (1, 2, 8, 16)  # [batch, n_kv_heads, max_seq, head_dim]
    assert fixed.k_cache[0].dtype == model.dtype
    with pytest.raises(ValueError, match="max_seq_len must be in 1..96"):
        FastLlama(model, max_seq_len=200)


def test_cache_lengths_are_few_and_close_to_what_is_needed():
    assert cache_lengths(8192) == [256, 512, 1024, 2048, 4096, 8192]
    assert cache_lengths(4096) == [256, 512, 1024, 2048, 4096]
    assert cache_lengths(131072) == [256, 1024, 4096, 16384, 65536, 131072]  # Llama 3.1's context: steps of 4
    assert cache_lengths(96) == [96]
    for context in (96, 300, 2048, 4096, 8192, 32768, 131072, 1 << 20):
        lengths = cache_lengths(context)
        assert len(lengths) <= MAX_CACHE_LENGTHS < torch._dynamo.config.recompile_limit
        assert lengths == sorted(set(lengths)) and lengths[-1] == context
        for needed in {n for n in (1, 255, 256, 257, context // 3 + 1, context) if n <= context}:
            i = lengths.index(cache_bucket(needed, context))
            assert needed <= lengths[i] and (i == 0 or lengths[i - 1] < needed)  # the shortest that holds it
    assert all(cache_bucket(n, 8192) < 2 * n for n in range(257, 8193))  # never twice what is needed
    with pytest.raises(ValueError, match="context is 96"):
        cache_bucket(97, 96)


def test_cache_only_grows_and_compiles_a_bounded_number_of_graphs():
    """Alternating short and long prompts over three FastLlama objects: the cache is reallocated only when a
    request needs more than it holds, and the compiled step is compiled once per cache length reached (here 3:
    256, 512 and 1024 positions), not once per request or per instance. CompileCounter is a torch.compile
    backend that counts the graphs dynamo hands it and runs them as they are."""
    model = small_model("gqa", context=2048)
    counter = CompileCounter()
    instances = [FastLlama(model, compile=True, compile_backend=counter, fuse=fuse) for fuse in (True, True, False)]
    eager = FastLlama(model)
    lengths_seen = set()
    for round_ in range(2):
        for fl in instances:
            for prompt_len in (3, 300, 5, 700, 4):
                before = (fl.cache_len_alloc, fl.k_cache[0].data_ptr() if fl.k_cache else None)
                prompt = [(7 * i + prompt_len) % 256 for i in range(prompt_len)]
                ids = fl.generate(prompt, 4)
                if round_ == 0 and fl is instances[0]:
                    assert ids == eager.generate(prompt, 4)  # the counted graphs compute the right thing
                lengths_seen.add(fl.cache_len_alloc)
                if before[1] is not None and prompt_len + 3 <= before[0]:  # it fitted: no reallocation
                    assert (fl.cache_len_alloc, fl.k_cache[0].data_ptr()) == before
                assert fl.cache_len_alloc >= before[0]  # grow only
    assert lengths_seen == {256, 512, 1024}
    # fused and unfused steps are different graphs: 3 lengths x 2 variants; nothing more across 30 requests
    assert counter.frame_count == 6, counter.frame_count


def test_fixed_cache_compiles_once_whatever_the_prompt_length():
    model = small_model("mha", context=2048)
    counter = CompileCounter()
    instances = [FastLlama(model, max_seq_len=512, compile=True, compile_backend=counter) for _ in range(2)]
    for prompt_len in (3, 300, 5, 200, 100):
        for fl in instances:
            fl.generate([i % 256 for i in range(1, prompt_len + 1)], 3)
    assert counter.frame_count == 1  # one graph for both instances and every prompt length


# --- the attention calls ------------------------------------------------------------------------------------
class SDPASpy:
    """Records every F.scaled_dot_product_attention call (phase, shapes, mask, flags) and runs it unchanged."""

    def __init__(self, monkeypatch):
        self.real, self.calls, self.phase = F.scaled_dot_product_attention, [], None
        monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", self)

    def __call__(self, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        self.calls.append(dict(phase=self.phase, q=tuple(q.shape), k=tuple(k.shape), is_causal=is_causal,
                               mask=None if attn_mask is None else tuple(attn_mask.shape), enable_gqa=enable_gqa))
        return self.real(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                         enable_gqa=enable_gqa)


@pytest.mark.parametrize("kind", sorted(SMALL))
@pytest.mark.parametrize("gqa_in_kernel", [True, False])
def test_attention_calls_a_fused_cuda_kernel_accepts(kind, gqa_in_kernel, monkeypatch):
    """The calls are shaped for CUDA's fused kernels (torch's sdp_utils): flash takes no mask, so prefill is
    causal without one; whether the memory-efficient and cuDNN kernels take a mask together with enable_gqa
    depends on the GPU and the torch version, so no call asks for both, and decode folds the group's query
    heads into the sequence instead. PyTorch's CPU flash kernel takes both, so a CPU run cannot show which CUDA
    kernel is picked: the calls themselves are inspected. ``gqa_in_kernel=False`` is the path for GPUs
    without flash (T4): K/V repeated."""
    model = small_model(kind)
    torch.manual_seed(1)
    tokens = torch.randint(0, 256, (2, 12))
    fast = FastLlama(model, max_batch_size=2, max_seq_len=32)
    fast.gqa_in_kernel = gqa_in_kernel
    spy = SDPASpy(monkeypatch)
    spy.phase = "prefill"
    got = [fast.prefill(tokens[:, :9])]
    spy.phase = "decode"
    got += [fast.decode_step(tokens[:, i], i) for i in range(9, 12)]
    a, n_layers = model.args, model.args.n_layers
    assert [c["phase"] for c in spy.calls] == ["prefill"] * n_layers + ["decode"] * 3 * n_layers
    for c in spy.calls:
        assert not (c["mask"] is not None and c["enable_gqa"]), c
        if c["phase"] == "prefill":  # causal without a mask: flash's call (GQA in the kernel where it has it)
            assert c["mask"] is None and c["is_causal"], c
            assert c["enable_gqa"] == (gqa_in_kernel and a.n_kv_heads != a.n_heads), c
            assert c["k"][1] == (a.n_kv_heads if c["enable_gqa"] else a.n_heads), c
        else:  # one query: the group's query heads folded into the sequence dimension, one mask row for all
            assert not c["enable_gqa"] and not c["is_causal"], c
            assert c["q"] == (2, a.n_kv_heads, a.n_heads // a.n_kv_heads, a.head_dim), c
            assert c["k"] == (2, a.n_kv_heads, 32, a.head_dim) and c["mask"] == (1, 1, 1, 32), c
    with torch.no_grad():
        want = model(tokens)[:, 8:]
    assert (torch.stack(got, dim=1) - want).abs().max().item() < TOL


# --- positions and sampling ---------------------------------------------------------------------------------
def test_positions_are_checked_on_the_host():
    model = small_model("gqa")
    fixed = FastLlama(model, max_seq_len=8)
    with pytest.raises(ValueError, match="no cache yet"):
        FastLlama(model).decode_step(torch.tensor([1]), torch.tensor([0]))
    # 5 prompt tokens and 6 new ones: decode steps at positions 5..9, past the 8 slots
    with pytest.raises(ValueError, match="10 positions needed but the static cache holds 8"):
        fixed.generate([1, 2, 3, 4, 5], max_new_tokens=6)
    # 5 + 4: the last decode step runs at position 7, the last slot (the 4th token is sampled, not fed back)
    assert fixed.generate([1, 2, 3, 4, 5], max_new_tokens=4) == list(generate_ids(model, [1, 2, 3, 4, 5], 4))
    with pytest.raises(ValueError, match="pos 8 is outside the static cache"):
        fixed.decode_step(torch.tensor([1]), 8)
    sized = FastLlama(model)  # cache sized per request: the model's context (96) is the limit
    with pytest.raises(ValueError, match="100 positions needed but the model's context is 96"):
        sized.generate(list(range(1, 51)), max_new_tokens=51)
    assert sized.k_cache == []  # refused before anything was allocated or run


def test_seedless_sampling_leaves_the_global_random_state_alone():
    model = small_model("gqa")
    cpu_state = torch.get_rng_state()
    FastLlama(model).generate([1, 2, 3], 8, temperature=0.8, top_p=0.9)
    list(generate_ids(model, [1, 2, 3], 8, temperature=0.8))
    assert torch.equal(torch.get_rng_state(), cpu_state)
    a = FastLlama(model).generate([1, 2, 3], 16, temperature=0.8, top_p=0.9, seed=7)
    assert torch.equal(torch.get_rng_state(), cpu_state)
    assert a == FastLlama(model).generate([1, 2, 3], 16, temperature=0.8, top_p=0.9, seed=7)


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
    assert fast.generate(prompts[:2], 10) == rows[:2]  # a smaller batch in the same cache


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


# --- bf16 and fp16 on CPU: an error model ---------------------------------------------------------------------
# The fast path rounds where the readable model rounds (the residual stream, the cache and every projection in
# the model dtype; RMSNorm, RoPE and softmax in float32), so in a 16-bit dtype its distance from the float32
# logits should be the readable model's own, up to the order of sums. The error model: e = the readable model's
# max |logit - float32 logit| / max |float32 logit|, measured in each run; the fast path must be within 2e of
# float32 and of the readable model, and e itself within 8u (u: the dtype's unit roundoff, bf16 2^-8, fp16
# 2^-11) so that the reference cannot drift unnoticed. Measured here (gqa, positions 308-319): e = 2.2u (bf16),
# 2.3u (fp16); fast vs readable 0.9u in both. Deliberately broken variants the 2e bound must catch:
# - fp16: RMSNorm computed in fp16 (x² of a residual entry of 400 overflows fp16's 65,504; the bundled model's
#   stream reaches 22,517): 91u from float32;
# - bf16: RoPE angles computed in bf16 (position × frequency rounded; past 256, bf16 steps by 2): 75u.
# RMSNorm in bf16 is not caught, and need not be: 2.7u, within bf16's own rounding (chapter 4's table).
LONG = 320  # positions in the dtype test: past 256, bf16 steps by 2, so RoPE angles in bf16 are off by up to 1 rad


def sensitive_model(dtype) -> al.Transformer:
    """A small GQA model that the precision bugs above would hurt: sharp attention (q/k weights x4, so
    positions matter) and one token (id 0) whose embedding has an entry of 400, a "massive activation"."""
    model = small_model("gqa", context=LONG)
    with torch.no_grad():
        model.tok_embeddings.weight[0, 0] = 400.0
        for block in model.layers:
            block.attention.wq.weight.mul_(4.0)
            block.attention.wk.weight.mul_(4.0)
    return model.to(dtype)


def low_precision_rms_norm(x, weight, eps):  # the bug: no float32 inside
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def bf16_rope_angles(fast: FastLlama) -> None:  # the bug: position × frequency in the model's dtype
    a, dtype = fast.args, fast.dtype
    inv_freq = 1.0 / (a.rope_theta ** (torch.arange(0, a.head_dim, 2, dtype=torch.float32) / a.head_dim))
    angles = (torch.arange(a.max_seq_len).to(dtype)[:, None] * inv_freq.to(dtype)[None]).float()
    fast.rope_cos, fast.rope_sin = angles.cos(), angles.sin()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_within_the_error_model(dtype, monkeypatch):
    tokens = torch.randint(1, 256, (1, LONG), generator=torch.Generator().manual_seed(0))
    tokens[0, ::37] = 0  # the massive-activation token, at positions that are compared
    split = LONG - 12
    want32, _ = reference_then_fast(sensitive_model(torch.float32), tokens, split, max_seq_len=LONG)
    model = sensitive_model(dtype)
    want, got = reference_then_fast(model, tokens, split, max_seq_len=LONG)
    u, e = UNIT_ROUNDOFF[dtype], relative_diff(want, want32)
    report = f"e = {e / u:.2f}u; fast vs float32 {relative_diff(got, want32) / u:.2f}u, " \
             f"vs readable {relative_diff(got, want) / u:.2f}u"
    assert e < 8 * u, report
    assert relative_diff(got, want32) < 2 * e and relative_diff(got, want) < 2 * e, report

    if dtype == torch.float16:
        monkeypatch.setattr(fast_module, "rms_norm", low_precision_rms_norm)
        broken = FastLlama(model, max_seq_len=LONG)
    else:
        broken = FastLlama(model, max_seq_len=LONG)
        bf16_rope_angles(broken)
    bad = teacher_forced(broken, tokens, split)
    assert relative_diff(bad, want32) > 2 * e, f"the broken variant went unnoticed: " \
        f"{relative_diff(bad, want32) / u:.1f}u; {report}"


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
def first_unexplained_divergence(got: list[int], want: list[int], ref_logits: torch.Tensor, slack: float):
    """Greedy tokens may part where the reference's top two logits are closer than the two paths' logits can
    differ (``slack``, absolute): a near tie. Returns None if ``got`` follows ``want`` up to the end or up to
    such a near tie, else (step, the reference's top-2 gap there). ``ref_logits``: [steps, vocab], the
    reference's logits that chose ``want``."""
    for step, (g, w) in enumerate(zip(got, want)):
        if g != w:
            top2 = ref_logits[step].float().topk(2).values
            gap = (top2[0] - top2[1]).item()
            return None if gap <= slack else (step, gap)
    return None


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["gqa", "mha"])
@pytest.mark.parametrize("compile", [False, True])
def test_cuda_bf16_small(kind, compile):
    """The error model of the CPU test above, on CUDA's kernels: within 3e of float32 (3, not 2: cuBLAS may
    split sums differently for fused and unfused shapes)."""
    torch.manual_seed(1)
    tokens = torch.randint(0, 256, (2, 30), device="cuda")
    want32, _ = reference_then_fast(small_model(kind, device="cuda"), tokens, split=9, max_seq_len=48)
    model = small_model(kind, device="cuda", dtype=torch.bfloat16)
    want, got = reference_then_fast(model, tokens, split=9, max_seq_len=48, compile=compile)
    e = relative_diff(want, want32)
    print(f"{kind} compile={compile}: e = {e / 2**-8:.2f}u, fast vs float32 {relative_diff(got, want32) / 2**-8:.2f}u")
    assert e < 8 * UNIT_ROUNDOFF[torch.bfloat16]
    assert relative_diff(got, want32) < 3 * e


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("gqa_in_kernel", [True, False])
def test_cuda_every_attention_call_on_a_fused_kernel(dtype, gqa_in_kernel):
    """With the math kernel switched off, SDPA raises "No available kernel" for any call no fused kernel takes."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = small_model("gqa", device="cuda", dtype=dtype)
    fast = FastLlama(model, max_seq_len=64)
    fast.gqa_in_kernel = gqa_in_kernel
    prompt = list(range(1, 20))
    want = FastLlama(model, max_seq_len=64).generate(prompt, 12)
    fused = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
    with sdpa_kernel(fused):
        got = fast.generate(prompt, 12)
    assert got == want


@needs_cuda
@pytest.mark.cuda
def test_cuda_compiled_recompiles_once_per_cache_length():
    """CUDA graphs (mode "reduce-overhead") with alternating prompt lengths: one graph per cache length, and the
    same tokens as the eager step (float32, so that no near tie can part them)."""
    model = small_model("gqa", device="cuda", context=2048)
    torch._dynamo.utils.counters.clear()
    fast, eager = FastLlama(model, compile=True), FastLlama(model)
    for prompt_len in (3, 300, 5, 300, 4):
        prompt = [(7 * i) % 256 for i in range(prompt_len)]
        # 6 new tokens, 5 decode steps: CUDA graph warm-up, recording, then replays, in every call
        assert fast.generate(prompt, 6) == eager.generate(prompt, 6)
    assert fast.cache_len_alloc == 512
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2  # 256 and 512 positions


@needs_cuda
@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.parametrize("compile", [False, True])
def test_cuda_bf16_bundled(compile):
    """bf16 roundings differ between the two paths, so greedy paths may part at a near tie: tokens must agree
    up to the first step where the readable model's top-2 gap is within what the logits can differ, and the
    logits (both fed the same tokens) stay within the error model: 3e from float32."""
    model32, tok = al.load("smollm2-135m", device="cuda", dtype="float32")
    prompt = tok.encode("The capital of France is")
    model, _ = al.load("smollm2-135m", device="cuda", dtype="bfloat16")
    want = list(generate_ids(model, prompt, 20))
    fast = FastLlama(model, max_seq_len=64, compile=compile)
    got = fast.generate(prompt, 20)
    tokens = torch.tensor([prompt + want], device="cuda")
    with torch.no_grad():
        ref = model(tokens)[0, len(prompt) - 1:]
        ref32 = model32(tokens)[0, len(prompt) - 1:]
    steps = teacher_forced(fast, tokens, len(prompt))[0]
    e, d = relative_diff(ref, ref32), relative_diff(steps, ref32)
    print(f"bundled bf16 compile={compile}: e = {e / 2**-8:.2f}u, fast vs float32 {d / 2**-8:.2f}u")
    assert d < 3 * e
    slack = 2 * (steps - ref).abs().max().item()  # each side may be off by the measured difference
    assert first_unexplained_divergence(got, want, ref, slack) is None, (got, want)
