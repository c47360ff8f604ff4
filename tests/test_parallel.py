"""Tensor parallelism (parallel.py): each rank's slice, and TP = 2 on two gloo processes against one process.

The reference is the single-process model (``annotated_llama.load``), itself tested against transformers in
test_weights.py and test_model.py. Two process launches in all (each costs a torch import per rank): one runs
every checkpoint, one makes a rank fail.
"""

from __future__ import annotations

import os
import shutil
import time

import pytest
import torch
from helpers import hf_model, save_meta_checkpoint

import annotated_llama as al
from annotated_llama import assets, parallel
from annotated_llama.generate import generate_ids
from annotated_llama.parallel import TensorParallelError, plan
from annotated_llama.weights import CheckpointError, read_meta_dir

PROMPT = [1, 450, 7483, 310, 3444, 338]  # "The capital of France is" in Llama 2's vocabulary, with BOS
TIMEOUT_S = 20  # the process group's timeout: a rank left waiting raises after this


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Small checkpoints in the formats a rank reads, with Llama 2's tokenizer beside each."""
    al.llama2_tokenizer()  # writes the tokenizer into the cache
    tok = assets.cache_dir() / "llama2-tokenizer.model"
    root = tmp_path_factory.mktemp("tp")
    dirs = {}
    for kind in ("mha", "gqa"):
        hf = hf_model(kind, vocab_size=32000)
        dirs[f"meta2-{kind}"] = save_meta_checkpoint(hf, root / f"meta2-{kind}", n_shards=2)
        hf.save_pretrained(root / f"hf-{kind}")
        dirs[f"hf-{kind}"] = root / f"hf-{kind}"
    # one shard, two ranks: sliced on load, not loaded whole
    dirs["meta1-mha"] = save_meta_checkpoint(hf_model("mha", vocab_size=32000), root / "meta1-mha", n_shards=1)
    # shaped like the bundled SmolLM2: 9 query heads over 3 KV heads (4 + 5 heads on 2 ranks; KV head 1 is
    # read on both), tied embeddings
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=32000, hidden_size=72, num_attention_heads=9, num_key_value_heads=3,
                                 intermediate_size=192, num_hidden_layers=2, max_position_embeddings=128,
                                 tie_word_embeddings=True)).save_pretrained(root / "hf-9-heads")
    dirs["hf-9-heads"] = root / "hf-9-heads"
    for d in dirs.values():
        shutil.copy(tok, d / "tokenizer.model")
    return dirs


# --- The plan and the per-rank readers, in this process ------------------------------------------------
def test_plan_divides_heads_and_states_the_gqa_rule():
    args = al.ModelArgs(dim=128, n_layers=1, n_heads=8, n_kv_heads=2, vocab_size=256, hidden_dim=344)
    assert [plan(args, r, 2).kv_heads for r in range(2)] == [(0,), (1,)]  # KV heads divided
    assert [plan(args, r, 4).kv_heads for r in range(4)] == [(0,), (0,), (1,), (1,)]  # one, replicated
    assert plan(args, 1, 2).q_heads == (4, 8) and plan(args, 1, 2).ffn == (172, 344)
    odd = al.ModelArgs(dim=96, n_layers=1, n_heads=6, n_kv_heads=3, vocab_size=256, hidden_dim=256)
    assert [plan(odd, r, 2).kv_heads for r in range(2)] == [(0, 0, 1), (1, 2, 2)]  # one copy per query head
    smol = al.ModelArgs(dim=576, n_layers=1, n_heads=9, n_kv_heads=3, vocab_size=49152, hidden_dim=1536)
    assert [plan(smol, r, 2).q_heads for r in range(2)] == [(0, 4), (4, 9)]  # uneven: 4 + 5
    assert [plan(smol, r, 3).kv_heads for r in range(3)] == [(0,), (1,), (2,)]


@pytest.mark.parametrize("tp, field", [(5, "n_heads"), (0, "positive"), (2, "vocab_size"), (3, "dim")])
def test_plan_refuses_uneven_splits(tp, field):
    args = al.ModelArgs(dim=64, n_layers=1, n_heads=4, vocab_size=255 if field == "vocab_size" else 256,
                        hidden_dim=192)
    with pytest.raises(ValueError, match=field):
        plan(args, 0, tp)


def _reassemble(parts: list[dict], name: str, dim: int | None) -> torch.Tensor:
    return parts[0][name] if dim is None else torch.cat([p[name] for p in parts], dim)


@pytest.mark.parametrize("source, tp", [("meta2-gqa", 2), ("meta1-mha", 2), ("hf-gqa", 2), ("meta2-mha", 4),
                                        ("gguf", 2)])
def test_rank_slices_put_back_together_are_the_whole_model(checkpoints, tmp_path, source, tp):
    """Every rank's slices, concatenated along the split dimension, give the single-process state dict."""
    from annotated_llama.weights import _SHARD_DIM, read_gguf, read_hf_dir

    if source == "gguf":
        from test_family import write_gguf

        path = tmp_path / "m.gguf"
        write_gguf(path, hf_model("gqa", vocab_size=256))
        _, full = read_gguf(path)
        parts = [parallel.read_gguf_rank(path, r, tp)[1] for r in range(tp)]
    else:
        path = checkpoints[source]
        _, full = (read_hf_dir(path) if source.startswith("hf") else read_meta_dir(path, vocab_size=32000))
        parts = [parallel.read_rank(path, r, tp)[1] for r in range(tp)]
    for name, tensor in full.items():
        dim = _SHARD_DIM.get(name.split(".")[-2])
        assert torch.equal(_reassemble(parts, name, dim), tensor), name


def test_shard_r_is_loaded_on_rank_r_as_saved(checkpoints):
    path = checkpoints["meta2-mha"]
    _, sd, how = parallel.read_meta_rank(path, 1, 2)
    assert "no merge" in how
    saved = torch.load(path / "consolidated.01.pth", weights_only=True)
    assert all(torch.equal(sd[k], saved[k]) for k in saved)


def test_shards_that_do_not_match_params_are_refused(checkpoints, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(checkpoints["meta2-mha"], broken)
    (broken / "consolidated.01.pth").unlink()  # one half of a 2-way split left: params.json wants twice as much
    for tp, rank in ((1, 0), (2, 1)):
        with pytest.raises(CheckpointError, match="does not hold rank"):
            parallel.read_rank(broken, rank, tp)


def test_load_without_a_process_group_says_how_to_launch():
    with pytest.raises(TensorParallelError, match="init"):
        parallel.load("smollm2-135m")


# --- Two gloo processes ----------------------------------------------------------------------------------
def every_checkpoint(sources: dict, device: str = "cpu") -> dict:
    """Run on each rank: TP logits and greedy tokens for every checkpoint."""
    return {name: parallel.logits_and_greedy(path, PROMPT, 6, device) for name, path in sources.items()}


@pytest.mark.slow
def test_tp2_equals_one_process(checkpoints):
    sources = {k: str(v) for k, v in checkpoints.items()}
    ranks = parallel.run_local(every_checkpoint, 2, sources, timeout_s=TIMEOUT_S, threads=1)
    check_against_one_process(checkpoints, ranks, tolerance=1e-5)


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs (NCCL)")
def test_tp2_on_two_gpus_with_nccl(checkpoints):
    sources = {k: str(v) for k, v in checkpoints.items()}
    ranks = parallel.run_local(every_checkpoint, 2, sources, "cuda", timeout_s=TIMEOUT_S, device="cuda")
    # GPU float32 kernels sum in other orders than the CPU reference's: a looser bound than on CPU
    check_against_one_process(checkpoints, ranks, tolerance=1e-4)


def check_against_one_process(checkpoints, ranks, tolerance):
    for name, path in checkpoints.items():
        model, _ = al.load(path, device="cpu", dtype=torch.float32)
        with torch.inference_mode():
            expected = model(torch.tensor([PROMPT]))
        expected_ids = list(generate_ids(model, PROMPT, 6))
        for rank, results in enumerate(ranks):
            logits, ids, how = results[name]
            assert logits.shape == expected.shape
            diff = (logits - expected).abs().max().item()
            assert diff <= tolerance, f"{name} rank {rank}: max |Δlogit| = {diff:.2e}"
            assert ids == expected_ids, f"{name} rank {rank}"
        assert ("no merge" in ranks[1][name][2]) == name.startswith("meta2")


def fail_on_rank_1(good: str, broken: str) -> list[str]:
    """Rank 1 meets a broken checkpoint, then dies in the middle of generation; rank 0 must not hang."""
    seen = []
    rank = torch.distributed.get_rank()
    try:
        parallel.load(broken if rank == 1 else good, device="cpu")
    except TensorParallelError as e:
        seen.append(str(e))
    model, _ = parallel.load(good, device="cpu")
    if rank == 1:
        os._exit(3)  # a crash: no exception, no goodbye
    try:
        model(torch.tensor([PROMPT]))
    except TensorParallelError as e:
        raise TensorParallelError(f"{e}\nearlier, while loading: {seen}") from e
    return seen


@pytest.mark.slow
def test_a_failing_rank_fails_every_rank_without_a_hang(checkpoints, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(checkpoints["meta2-mha"], broken)
    (broken / "consolidated.01.pth").write_bytes(b"not a checkpoint")
    start = time.monotonic()
    with pytest.raises(TensorParallelError) as info:
        parallel.run_local(fail_on_rank_1, 2, str(checkpoints["meta2-mha"]), str(broken), timeout_s=TIMEOUT_S,
                           threads=1)
    message = str(info.value)
    # loading: rank 1's error reached both ranks, and named rank 1 and the file
    assert "rank 0: tensor-parallel loading failed on rank(s) 1" in message
    assert "rank 1: CheckpointError" in message and "consolidated.01.pth" in message
    # the crash: rank 0's first collective (the embedding's all-gather) fails instead of waiting for ever
    assert "rank 0: rank 0: all_gather after the token embedding failed" in message
    assert "another rank has probably failed" in message
    assert "rank 1: exited (code 3)" in message
    assert time.monotonic() - start < TIMEOUT_S + 60  # the process-group timeout bounds the wait
