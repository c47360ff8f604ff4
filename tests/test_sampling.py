"""The samplers' distributions against an exact computation: ``generate.sample_next`` (temperature, top-k,
top-p) and ``fast.sample_on_device`` (temperature, top-p).

Reference: ``exact_distribution`` below, written from the definitions with Python floats and ``math.exp``
(no torch, nothing shared with the samplers but the definition): divide the logits by the temperature,
softmax, keep the ``top_k`` most likely tokens, then the most likely tokens until the kept probability
reaches ``top_p`` (a token is kept if the tokens ranked above it hold less than ``top_p``), renormalise.

Each case draws N = 20,000 tokens from one row of logits repeated N times (one call, [N, vocab]) with a seeded
generator, and compares every token's frequency with its exact probability within 5 binomial standard
errors (5·sqrt(p(1-p)/N), at most 0.018); an excluded token must never appear. The seeds are fixed, so a
result never changes from run to run; 5 standard errors make it very unlikely that a correct sampler fails
on a new seed. The logits are spread out (probabilities from under 0.01 to 0.76) so that a sampler that
ignores the temperature, top-k or top-p is off by far more than that (at temperature 0.5 the top token
has 0.762 instead of 0.542), and every top-p threshold is more than 0.01 from any cumulative sum, so float
rounding cannot move a token in or out of the kept set.
"""

import math

import pytest
import torch

from annotated_llama.fast import sample_on_device
from annotated_llama.generate import sample_next

N = 20_000
SIGMAS = 5.0
# Six tokens in no particular order (sorting is part of what is tested). Probabilities, and their cumulative
# sums in rank order:
#   temperature 1.0: 0.047 0.283 0.009 0.094 0.026 0.542   cumulative 0.542 0.825 0.919 0.966 0.991
#   temperature 0.5: 0.006 0.208 0.000 0.023 0.002 0.762   cumulative 0.762 0.969 0.992 0.998 1.000
#   temperature 0.7: 0.020 0.259 0.002 0.054 0.008 0.657   cumulative 0.657 0.916 0.970 0.990 0.998
#   temperature 1.5: 0.083 0.276 0.027 0.133 0.056 0.426   cumulative 0.426 0.702 0.834 0.918 0.973
#   temperature 2.0: 0.106 0.260 0.045 0.150 0.078 0.360   cumulative 0.360 0.620 0.771 0.876 0.955
LOGITS = [0.2, 2.0, -1.5, 0.9, -0.4, 2.65]


def exact_distribution(logits, temperature, top_k=None, top_p=1.0, renormalise_after_top_k=False):
    """The probability of each token, by the definition above, in plain Python floats.

    ``renormalise_after_top_k``: the other convention (transformers' warpers), where top-p measures the mass
    among the top-k tokens only; used only to check that the cases below do not depend on the choice.
    """
    scaled = [x / temperature for x in logits]
    top = max(scaled)
    weights = [math.exp(x - top) for x in scaled]
    probs = [w / sum(weights) for w in weights]
    ranked = sorted(range(len(probs)), key=lambda i: -probs[i])
    if top_k is not None:
        ranked = ranked[:top_k]
    scale = sum(probs[i] for i in ranked) if renormalise_after_top_k else 1.0
    kept, mass = [], 0.0
    for i in ranked:
        if mass >= top_p:
            break
        kept.append(i)
        mass += probs[i] / scale
    kept_mass = sum(probs[i] for i in kept)
    return [probs[i] / kept_mass if i in kept else 0.0 for i in range(len(probs))]


def check_frequencies(ids: torch.Tensor, expected: list[float]):
    counts = torch.bincount(ids, minlength=len(expected)).tolist()
    assert sum(counts) == N
    for token, (count, p) in enumerate(zip(counts, expected)):
        if p == 0.0:
            assert count == 0, f"token {token} is excluded but was drawn {count} times"
            continue
        freq, se = count / N, math.sqrt(p * (1 - p) / N)
        assert abs(freq - p) <= SIGMAS * se, (
            f"token {token}: frequency {freq:.4f}, exact probability {p:.4f} "
            f"({abs(freq - p) / se:.1f} standard errors off); all frequencies "
            f"{[round(c / N, 4) for c in counts]}, exact {[round(q, 4) for q in expected]}")


def draw(sampler, seed, **kw):
    logits = torch.tensor(LOGITS).expand(N, -1).contiguous()  # [N, vocab]: N independent draws
    generator = torch.Generator().manual_seed(seed)
    ids = sampler(logits, generator=generator, **kw)
    assert ids.shape == (N,) and ids.dtype == torch.long
    return ids


# (temperature, top_k, top_p), probabilities as in the table at the top. With both top-k and top-p, a token is
# kept if both keep it; the two mixed cases make each in turn the one that binds.
CASES = [
    (1.0, None, 1.0),
    (0.5, None, 1.0),  # sharper: the top token 0.762 instead of 0.542
    (2.0, None, 1.0),  # flatter: the top token 0.360
    (1.0, 3, 1.0),
    (0.7, 2, 1.0),
    (1.0, None, 0.9),  # 3 tokens: mass before the 3rd 0.825 < 0.9, before the 4th 0.919
    (1.5, None, 0.6),  # 2 tokens: 0.426 < 0.6 <= 0.702
    (1.5, 2, 0.9),  # top-k binds: top-p alone would keep 4 (0.834 < 0.9 <= 0.918)
    (1.5, 4, 0.68),  # top-p binds: 2 tokens of the top 4 (0.426 < 0.68 <= 0.702)
]
DEVICE_CASES = [(0.5, 1.0), (2.0, 1.0), (0.7, 0.9), (1.5, 0.6), (1.0, 0.9)]  # (temperature, top_p); no top-k


@pytest.mark.parametrize("seed,temperature,top_k,top_p", [(i, *c) for i, c in enumerate(CASES)])
def test_sample_next_distribution(seed, temperature, top_k, top_p):
    expected = exact_distribution(LOGITS, temperature, top_k, top_p)
    ids = draw(sample_next, seed, temperature=temperature, top_p=top_p, top_k=top_k)
    check_frequencies(ids, expected)


@pytest.mark.parametrize("seed,temperature,top_p", [(100 + i, *c) for i, c in enumerate(DEVICE_CASES)])
def test_sample_on_device_distribution(seed, temperature, top_p):
    expected = exact_distribution(LOGITS, temperature, None, top_p)
    ids = draw(sample_on_device, seed, temperature=temperature, top_p=top_p)
    check_frequencies(ids, expected)


def test_cases_do_not_depend_on_the_top_p_convention():
    """Every case keeps the same tokens whether top-p counts the mass among all tokens or among the top k
    (this package does the first, transformers the second); and no threshold lies within 0.01 of a sum."""
    for temperature, top_k, top_p in CASES:
        ours = exact_distribution(LOGITS, temperature, top_k, top_p)
        other = exact_distribution(LOGITS, temperature, top_k, top_p, renormalise_after_top_k=True)
        assert [p > 0 for p in ours] == [p > 0 for p in other], (temperature, top_k, top_p)
        if top_p < 1.0:
            probs = sorted(exact_distribution(LOGITS, temperature), reverse=True)
            sums = [sum(probs[:j]) for j in range(1, 6)]
            assert min(abs(s - top_p) for s in sums) > 0.01, (temperature, top_p)


def test_greedy_and_seeds():
    logits = torch.tensor([LOGITS, LOGITS[::-1]])
    assert sample_next(logits, temperature=0.0).tolist() == [5, 0]
    assert sample_on_device(logits, temperature=0.0).tolist() == [5, 0]
    a = draw(sample_next, seed=7, temperature=1.0)
    b = draw(sample_next, seed=7, temperature=1.0)
    assert torch.equal(a, b)


@pytest.mark.parametrize("kw", [dict(temperature=-1.0), dict(temperature=1.0, top_p=0.0),
                                dict(temperature=1.0, top_p=1.5), dict(temperature=1.0, top_k=0)])
def test_sample_next_refuses_bad_arguments(kw):
    with pytest.raises(ValueError, match="need temperature >= 0"):
        sample_next(torch.zeros(1, 6), **kw)
