"""Looking inside the model: named activations from one forward pass, and the logit lens.

``run_with_cache(model, tokens, names=...)`` runs the model once with PyTorch forward hooks on its existing
modules (the model's code is not touched) and returns the logits and a dict of activations by name:

    embed                 token embeddings                         [batch, seq, dim]
    resid_pre.{i}         residual stream entering block i         [batch, seq, dim]
    attn_norm.{i}         attention_norm output (attention input)  [batch, seq, dim]
    attn.q.{i}            queries after RoPE, heads first          [batch, n_heads, seq, head_dim]
    attn.k.{i}            keys after RoPE, heads first (this call) [batch, n_kv_heads, seq, head_dim]
    attn.v.{i}            values, heads first (this call)          [batch, n_kv_heads, seq, head_dim]
    attn.scores.{i}       q·kᵀ/√head_dim, causal -inf mask, fp32   [batch, n_heads, seq, start_pos + seq]
    attn.probs.{i}        softmax of the scores, fp32              [batch, n_heads, seq, start_pos + seq]
    attn.out.{i}          attention output after wo                [batch, seq, dim]
    resid_mid.{i}         residual stream between attention and MLP [batch, seq, dim]
    mlp_norm.{i}          ffn_norm output (MLP input)              [batch, seq, dim]
    mlp.gate.{i}          w1·x, before SiLU                        [batch, seq, ffn_dim]
    mlp.up.{i}            w3·x                                     [batch, seq, ffn_dim]
    mlp.act.{i}           silu(gate) ⊙ up, the input of w2         [batch, seq, ffn_dim]
    mlp.out.{i}           feed-forward output after w2             [batch, seq, dim]
    resid_post.{i}        residual stream leaving block i          [batch, seq, dim]
    final_norm            the final RMSNorm's output               [batch, seq, dim]

The fast attention path (``scaled_dot_product_attention``) never materialises the attention weights, so
``attn.scores`` / ``attn.probs`` are recomputed from the queries and keys, and only for the layers asked for.
Only the requested names are stored (``names``: exact names or ``fnmatch`` patterns such as ``"attn.probs.*"``).

``logit_lens(model, tokens, target=...)`` decodes every layer's residual stream through the final RMSNorm
and the unembedding (nostalgebraist's "logit lens"): top tokens per layer and position, and the rank and
probability of a chosen token across layers.
"""

from __future__ import annotations

import contextlib
import fnmatch
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F

from .model import Transformer, apply_rotary_emb, attention_probabilities, causal_mask

PER_LAYER = (
    "resid_pre", "attn_norm", "attn.q", "attn.k", "attn.v", "attn.scores", "attn.probs", "attn.out",
    "resid_mid", "mlp_norm", "mlp.gate", "mlp.up", "mlp.act", "mlp.out", "resid_post",
)


def hook_names(model: Transformer) -> list[str]:
    """Every activation name ``run_with_cache`` can return for this model, in forward order."""
    names = ["embed"]
    for i in range(model.args.n_layers):
        names += [f"{kind}.{i}" for kind in PER_LAYER]
    return names + ["final_norm"]


def select_names(model: Transformer, names: str | Iterable[str] | None = None) -> list[str]:
    """Resolve ``names`` (None: all; exact names or fnmatch patterns) to a list of hook names.

    A name or pattern that matches nothing raises ``ValueError``: a typo should not silently return nothing.
    """
    available = hook_names(model)
    if names is None:
        return available
    if isinstance(names, str):
        names = [names]
    chosen: set[str] = set()
    for pattern in names:
        matched = fnmatch.filter(available, pattern)
        if not matched:
            raise ValueError(
                f"{pattern!r} matches no activation name; names look like 'resid_post.3', 'attn.probs.0', "
                f"'mlp.act.*', 'final_norm' (see annotated_llama.lens.hook_names(model))"
            )
        chosen.update(matched)
    return [n for n in available if n in chosen]  # forward order


def _heads_first(x: torch.Tensor, n_heads: int, head_dim: int) -> torch.Tensor:
    batch, seq, _ = x.shape
    return x.view(batch, seq, n_heads, head_dim).transpose(1, 2)  # [batch, heads, seq, head_dim]


@contextlib.contextmanager
def capture(model: Transformer, names: str | Iterable[str] | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Within the ``with`` block, every forward call of ``model`` stores the requested activations.

    Yields the dict that fills up (a later call overwrites earlier entries). The hooks are removed when
    the block ends, also when it ends with an exception.
    """
    wanted = set(select_names(model, names))
    store: dict[str, torch.Tensor] = {}
    handles: list[torch.utils.hooks.RemovableHandle] = []

    def put(name: str, value: torch.Tensor) -> None:
        if name in wanted:
            store[name] = value.detach()

    def want(*kinds: str, i: int) -> bool:
        return any(f"{k}.{i}" in wanted for k in kinds)

    def on_output(name: str):
        return lambda module, args, out: put(name, out)

    def on_input(name: str):
        return lambda module, args: put(name, args[0])

    try:
        if "embed" in wanted:
            handles.append(model.tok_embeddings.register_forward_hook(on_output("embed")))
        for i, layer in enumerate(model.layers):
            attn, ff = layer.attention, layer.feed_forward
            hooks = [
                (layer, "pre", "resid_pre"), (layer, "post", "resid_post"),
                (layer.attention_norm, "post", "attn_norm"), (layer.ffn_norm, "pre", "resid_mid"),
                (layer.ffn_norm, "post", "mlp_norm"), (attn, "post", "attn.out"),
                (ff.w1, "post", "mlp.gate"), (ff.w3, "post", "mlp.up"), (ff.w2, "pre", "mlp.act"),
                (ff, "post", "mlp.out"),
            ]
            for module, when, kind in hooks:
                if want(kind, i=i):
                    hook = on_input(f"{kind}.{i}") if when == "pre" else on_output(f"{kind}.{i}")
                    register = module.register_forward_pre_hook if when == "pre" else module.register_forward_hook
                    handles.append(register(hook))
            if want("attn.q", "attn.k", "attn.v", "attn.scores", "attn.probs", i=i):
                handles += _attention_hooks(attn, i, wanted, put)
        if "final_norm" in wanted:
            handles.append(model.norm.register_forward_hook(on_output("final_norm")))
        yield store
    finally:
        for handle in handles:
            handle.remove()


def _attention_hooks(attn, i: int, wanted: set[str], put) -> list:
    """Hooks on one Attention module: q/k after RoPE from the wq/wk outputs, and the attention weights.

    The Attention pre-hook records the call's ``start_pos`` and (already sliced) RoPE table; the wq/wk
    hooks rotate the projections exactly as ``Attention.forward`` does; the Attention post-hook, which
    runs after the KV cache was written, computes scores/probabilities against every cached key.
    """
    call: dict = {}
    need_probs = f"attn.scores.{i}" in wanted or f"attn.probs.{i}" in wanted

    def before(module, args):
        call.clear()
        call["start_pos"], call["freqs_cis"] = args[1], args[2]

    def rotated(proj_name: str, n_heads: int):
        def hook(module, args, out):
            batch, seq, _ = out.shape
            x = apply_rotary_emb(out.view(batch, seq, n_heads, attn.head_dim), call["freqs_cis"])
            x = x.transpose(1, 2)  # [batch, heads, seq, head_dim]
            call[proj_name] = x
            put(f"attn.{proj_name}.{i}", x)
        return hook

    def after(module, args, out):
        start_pos, q, k = call["start_pos"], call["q"], call["k"]
        if start_pos > 0 and attn.cache is not None:  # earlier keys come from the cache
            k = attn.cache.k[:, :, : start_pos + q.shape[2]]
        if f"attn.scores.{i}" in wanted:
            n_rep = q.shape[1] // k.shape[1]
            kr = k.repeat_interleave(n_rep, dim=1)
            scores = q.float() @ kr.float().transpose(-2, -1) / q.shape[-1] ** 0.5
            mask = causal_mask(q.shape[2], start_pos, q.device)
            put(f"attn.scores.{i}", scores.masked_fill(~mask, float("-inf")))
        if f"attn.probs.{i}" in wanted:
            put(f"attn.probs.{i}", attention_probabilities(q, k, start_pos))
        call.clear()

    handles = [attn.register_forward_pre_hook(before)]
    if need_probs or f"attn.q.{i}" in wanted:
        handles.append(attn.wq.register_forward_hook(rotated("q", attn.n_heads)))
    if need_probs or f"attn.k.{i}" in wanted:
        handles.append(attn.wk.register_forward_hook(rotated("k", attn.n_kv_heads)))
    if f"attn.v.{i}" in wanted:
        handles.append(attn.wv.register_forward_hook(
            lambda m, a, out: put(f"attn.v.{i}", _heads_first(out, attn.n_kv_heads, attn.head_dim))))
    if need_probs:
        handles.append(attn.register_forward_hook(after))
    return handles


def run_with_cache(
    model: Transformer,
    tokens: torch.Tensor,
    names: str | Iterable[str] | None = None,
    start_pos: int = 0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward pass (no gradients) -> (float32 logits [batch, seq, vocab], {name: activation}).

    ``names``: None for every activation (fine for small models; on a 7B model ask for what you need),
    or exact names / fnmatch patterns, e.g. ``["resid_post.*", "attn.probs.0"]``.
    """
    order = select_names(model, names)
    with torch.no_grad(), capture(model, order) as store:
        logits = model(tokens, start_pos=start_pos)
    return logits, {name: store[name] for name in order if name in store}  # in forward order


# --- The logit lens ------------------------------------------------------------------------------------
def decode_residual(model: Transformer, resid: torch.Tensor) -> torch.Tensor:
    """Read a residual-stream state as if it were the last layer's: final RMSNorm, then the unembedding.

    Each position is normalised by its own RMS (the norm runs on the state itself), not by the scale
    of the last layer's state. ``resid``: [..., dim] -> float32 logits [..., vocab].
    """
    with torch.no_grad():
        return model.output(model.norm(resid.to(model.dtype))).float()


@dataclass
class LogitLens:
    """Logit-lens readings of one sequence. Row 0 is the embedding (the stream before block 0); row
    l >= 1 the stream after block l - 1, so the last row is what the model itself outputs."""

    labels: list[str]  # row names: "embed", "layer 0", ..., f"layer {n_layers - 1}"
    top_ids: torch.Tensor  # [n_layers + 1, seq, k] long
    top_probs: torch.Tensor  # [n_layers + 1, seq, k] float32
    logits: torch.Tensor  # the model's own logits [seq, vocab]
    target: int | None = None
    target_rank: torch.Tensor | None = None  # [n_layers + 1, seq] long, 1 = the top token
    target_prob: torch.Tensor | None = None  # [n_layers + 1, seq] float32

    def first_layer_ranked_first(self, position: int = -1) -> int | None:
        """The first row (0 = embed) where ``target`` is the top token at ``position``; None if never."""
        rows = (self.target_rank[:, position] == 1).nonzero()
        return int(rows[0]) if len(rows) else None


def logit_lens(model: Transformer, tokens, target: int | None = None, k: int = 5) -> LogitLens:
    """Decode every layer's residual stream of one sequence (``tokens``: list, [seq] or [1, seq]).

    Keeps only the top ``k`` tokens per layer and position (and the target's rank and probability); the
    full-vocabulary logits exist for one chunk of states at a time.
    """
    tokens = torch.as_tensor(tokens, dtype=torch.long).reshape(1, -1) if not isinstance(tokens, torch.Tensor) \
        else tokens.reshape(1, -1) if tokens.dim() == 1 else tokens
    if tokens.shape[0] != 1:
        raise ValueError(f"logit_lens reads one sequence; got a batch of {tokens.shape[0]}")
    names = ["resid_pre.0"] + [f"resid_post.{i}" for i in range(model.args.n_layers)]
    logits, cache = run_with_cache(model, tokens, names=names)
    states = torch.stack([cache[name][0] for name in names])  # [n_layers + 1, seq, dim]
    rows, seq = states.shape[0], states.shape[1]
    flat = states.reshape(rows * seq, -1)
    # Decode many states per matmul (the unembedding is read once per chunk), at most ~2**24 logits at a time.
    chunk = max(1, 2**24 // model.args.vocab_size)
    top_ids, top_probs, ranks, probs_t = [], [], [], []
    for start in range(0, flat.shape[0], chunk):
        probs = F.softmax(decode_residual(model, flat[start : start + chunk]), dim=-1)  # [chunk, vocab]
        p, ids = probs.topk(k, dim=-1)
        top_ids.append(ids)
        top_probs.append(p)
        if target is not None:
            pt = probs[:, target]
            probs_t.append(pt)
            ranks.append((probs > pt[:, None]).sum(-1) + 1)
        del probs
    shape = (rows, seq)
    top_ids, top_probs = torch.cat(top_ids).view(*shape, k), torch.cat(top_probs).view(*shape, k)
    labels = ["embed"] + [f"layer {i}" for i in range(model.args.n_layers)]
    return LogitLens(
        labels, top_ids, top_probs, logits[0], target,
        torch.cat(ranks).view(shape) if ranks else None, torch.cat(probs_t).view(shape) if probs_t else None,
    )


__all__ = ["LogitLens", "capture", "decode_residual", "hook_names", "logit_lens", "run_with_cache", "select_names"]
