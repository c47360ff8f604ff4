"""The reference for the sampling explorer: the probabilities ``annotated_llama.generate.sample_next`` draws from.

``sample_next`` returns a drawn id, not its distribution; the distribution is what it passes to
``torch.multinomial``. We call the real ``sample_next`` with ``torch.multinomial`` replaced, for the length of one call, by a function that records its argument: the temperature, the top-p cut and the
renormalisation are the package's own code, untouched.
"""

from unittest import mock

import torch

from annotated_llama.generate import sample_next


def package_probabilities(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """``logits`` [1, n] -> the [n] probabilities ``sample_next`` samples from (0 for cut tokens)."""
    seen = {}
    real_multinomial = torch.multinomial

    def recording_multinomial(probs, num_samples, generator=None):
        seen["probs"] = probs.clone()
        return real_multinomial(probs, num_samples, generator=generator)

    with mock.patch.object(torch, "multinomial", recording_multinomial):  # generate.py calls torch.multinomial
        sample_next(logits, temperature=temperature, top_p=top_p,
                    generator=torch.Generator().manual_seed(0))
    return seen["probs"][0]
