"""Turning next-token logits into text: greedy, temperature, top-k and top-p sampling, streamed.

The prompt goes through the model once (prefill); then each new token goes through alone, reading the
earlier positions from the KV cache (decode). Sampling uses its own ``torch.Generator`` so a seed gives
the same text every time without touching the global random state.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


def sample_next(logits: torch.Tensor, temperature: float = 0.0, top_p: float = 1.0, top_k: int | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick one token per row of ``logits`` ([batch, vocab]); returns [batch] ids.

    temperature 0 is greedy (argmax). Otherwise: divide by the temperature, keep the ``top_k`` most likely
    tokens, then the smallest set whose probabilities add up to ``top_p``, renormalise and draw.
    With both limits set, ``top_p`` counts probability in the whole (temperature-scaled) distribution, not
    renormalised over the ``top_k`` survivors first, as transformers' logits warpers do: ours can keep more
    tokens than theirs for the same settings.
    """
    if temperature < 0 or not 0.0 < top_p <= 1.0 or (top_k is not None and top_k < 1):
        raise ValueError(f"need temperature >= 0, 0 < top_p <= 1, top_k >= 1; got {temperature}, {top_p}, {top_k}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    if top_k is not None:
        sorted_probs[:, top_k:] = 0.0
    # Keep a token if the tokens ranked above it hold less than top_p: the top one always survives.
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    sorted_probs[mass_before >= top_p] = 0.0
    choice = torch.multinomial(sorted_probs / sorted_probs.sum(-1, keepdim=True), 1, generator=generator)
    return order.gather(-1, choice).squeeze(-1)


def _prompt_ids(model, tokenizer, prompt: str, max_new_tokens: int) -> list[int]:
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    ids = tokenizer.encode(prompt)
    if not ids:
        raise ValueError("the prompt is empty (it encodes to no tokens); give some text to continue")
    limit = model.args.max_seq_len
    if len(ids) + max_new_tokens > limit:
        raise ValueError(
            f"the prompt is {len(ids)} tokens and {max_new_tokens} new tokens were asked for: "
            f"{len(ids) + max_new_tokens} > the model's context of {limit}; shorten one of them"
        )
    return ids


@torch.inference_mode()
def generate_ids(model, prompt_ids: list[int], max_new_tokens: int, temperature: float = 0.0,
                 top_p: float = 1.0, top_k: int | None = None, seed: int | None = None,
                 stop_ids: set[int] | None = None, n_tokens: int | None = None) -> Iterator[int]:
    """Yield new token ids one by one until a stop id (not yielded) or ``max_new_tokens``.

    ``n_tokens``: only ids below it may be picked (the tokenizer's size, where the model's embedding has spare
    rows that no token owns, as many checkpoints pad it to a round number)."""
    device = model.device
    generator = None
    if temperature > 0:
        generator = torch.Generator(device=device)
        if seed is None:  # a fresh seed for this generator only; torch.seed() would re-seed the global generators
            generator.seed()
        else:
            generator.manual_seed(seed)
    tokens = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    logits = model(tokens, start_pos=0, last_only=True)[:, -1]  # prefill: the whole prompt at once
    pos = len(prompt_ids)
    for step in range(max_new_tokens):
        if n_tokens is not None and n_tokens < logits.shape[-1]:
            logits[:, n_tokens:] = float("-inf")
        next_id = sample_next(logits, temperature, top_p, top_k, generator)
        token = int(next_id)
        if stop_ids and token in stop_ids:
            return
        yield token
        if step + 1 == max_new_tokens:
            return  # no forward pass for a token nobody will sample
        logits = model(next_id.view(1, 1), start_pos=pos, last_only=True)[:, -1]  # decode: one token
        pos += 1


def stream(model, tokenizer, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0,
           top_p: float = 1.0, top_k: int | None = None, seed: int | None = None) -> Iterator[str]:
    """Yield pieces of text as tokens arrive.

    Text is decoded from the prompt and all new ids each time, then the prompt's text cut off: decoding new
    ids alone would lose SentencePiece's leading space ("▁Paris" alone decodes to "Paris"), and a token can
    end inside a multi-byte UTF-8 character, so only text without a trailing replacement character is
    released.
    """
    ids = _prompt_ids(model, tokenizer, prompt, max_new_tokens)
    prefix = len(tokenizer.decode(ids))
    new: list[int] = []
    shown = ""
    for token in generate_ids(model, ids, max_new_tokens, temperature, top_p, top_k, seed, {tokenizer.eos_id},
                              n_tokens=tokenizer.vocab_size):
        new.append(token)
        text = tokenizer.decode(ids + new)[prefix:]
        if text.endswith("\ufffd"):
            continue
        yield text[len(shown):]
        shown = text
    text = tokenizer.decode(ids + new)[prefix:]
    if len(text) > len(shown):
        yield text[len(shown):]


def generate(model, tokenizer, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0,
             top_p: float = 1.0, top_k: int | None = None, seed: int | None = None) -> str:
    """The continuation of ``prompt`` (without the prompt): greedy when temperature is 0."""
    return "".join(stream(model, tokenizer, prompt, max_new_tokens, temperature, top_p, top_k, seed))
