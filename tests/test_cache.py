"""The KV cache from a cold start: ``KVCache`` on its own, and the model decoding through a cache that grows.

References: for ``KVCache``, the plain concatenation of everything written so far (no cache code involved);
for the model, one full pass over the whole sequence on a separate model that has never held a cache (it
shares the weights and the forward code, not the cache: what is compared is cached decoding against
recomputation). Every test starts from a cache that holds nothing, so a key that was never written, or an
old value lost when the cache grows, cannot be covered up by the right value left behind by an earlier call.
"""

import copy

import pytest
import torch

import annotated_llama as al
from annotated_llama.cache import KVCache

TOL = 1e-4  # float32, max abs logit difference


# --- KVCache alone ----------------------------------------------------------------------------------------
def test_kv_cache_keeps_everything_written_through_growth():
    """Chunks written one after another come back in order, including after the cache doubled twice."""
    cache = KVCache(batch=2, n_kv_heads=3, head_dim=4, capacity=3, max_capacity=64, dtype=torch.float32,
                    device=torch.device("cpu"))
    torch.manual_seed(0)
    written_k, written_v, capacities = [], [], [cache.capacity]
    pos = 0
    for n in (3, 2, 1, 1, 1, 4, 1):  # a prompt, a chunk, single tokens; 3 -> 6 -> 12 positions
        k, v = torch.randn(2, 3, n, 4), torch.randn(2, 3, n, 4)
        got_k, got_v = cache.update(pos, k, v)
        pos += n
        written_k.append(k)
        written_v.append(v)
        capacities.append(cache.capacity)
        # What attention reads: exactly the positions written so far (no empty slot, none missing).
        assert got_k.shape == got_v.shape == (2, 3, pos, 4)
        assert torch.equal(got_k, torch.cat(written_k, dim=2))
        assert torch.equal(got_v, torch.cat(written_v, dim=2))
    assert len(set(capacities)) >= 3, f"the cache should have grown at least twice: capacities {capacities}"
    assert cache.capacity <= 64


# --- The model, cold start, through growth ----------------------------------------------------------------
def small_model(n_kv_heads: int, seed: int = 0) -> al.Transformer:
    torch.manual_seed(seed)
    args = al.ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=n_kv_heads, vocab_size=101, hidden_dim=96,
                        max_seq_len=96, rope_theta=10000.0)
    model = al.Transformer(args).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):  # random gains, so a wrong norm would show
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif p.dim() == 2:
                p.normal_(0, 0.3)  # larger than the default init, so attention is not nearly uniform
    return model


@pytest.mark.parametrize("n_kv_heads", [2, 4], ids=["gqa", "mha"])
def test_cold_cache_through_growth_equals_one_pass(n_kv_heads):
    """Prompt of 5 (the cache is made for 5), a chunk of 4 (grows to 10), then one token at a time to 41
    (grows to 20, then 40, then 80): the logits at every position equal one pass over all 41 tokens."""
    model = small_model(n_kv_heads)
    fresh = copy.deepcopy(model)  # the reference: a model that has never held a cache
    torch.manual_seed(1)
    tokens = torch.randint(0, 101, (2, 41))
    with torch.no_grad():
        want = fresh(tokens)
        capacities = []
        got = [model(tokens[:, :5], start_pos=0)]
        capacities.append(model.layers[0].attention.cache.capacity)
        got.append(model(tokens[:, 5:9], start_pos=5))
        capacities.append(model.layers[0].attention.cache.capacity)
        for pos in range(9, tokens.shape[1]):
            got.append(model(tokens[:, pos:pos + 1], start_pos=pos))
            capacities.append(model.layers[0].attention.cache.capacity)
    assert capacities[0] == 5, "a cold start should size the cache for the prompt"
    assert len(set(capacities)) >= 3, f"the cache should have grown at least twice: capacities {capacities}"
    diff = (torch.cat(got, dim=1) - want).abs().max().item()
    assert diff <= TOL, f"cached decoding differs from one pass by {diff:.2e} (capacities {sorted(set(capacities))})"


def test_a_new_prompt_does_not_see_the_previous_one():
    """A second prompt, shorter, reusing the cache of a first one: its decoding equals a fresh model's."""
    model = small_model(2)
    fresh = copy.deepcopy(model)
    torch.manual_seed(2)
    first, second = torch.randint(0, 101, (1, 30)), torch.randint(0, 101, (1, 12))
    with torch.no_grad():
        model(first)  # leaves 30 positions of keys and values behind
        got = [model(second[:, :4])] + [model(second[:, p:p + 1], start_pos=p) for p in range(4, 12)]
        want = fresh(second)
    assert (torch.cat(got, dim=1) - want).abs().max().item() <= TOL
