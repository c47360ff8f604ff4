"""Rules that decide what runs on a GPU, and what a GPU run must show, checked on any machine.

The default dtype (``loading.resolve_device_dtype``): bf16 only where the GPU computes in bf16 natively (compute
capability 8.0 or more: A100, L4, H100), else fp16. ``torch.cuda.is_bf16_supported()`` is not the rule: by
default it counts emulation and answers True on a T4 (7.5), so it is mocked to True here and must not matter.

The benchmark (``benchmarks/gpu_decode.py``) lets a variant's greedy tokens leave the readable model's only at a
near tie; any other difference stops the run. Checked here with a model whose LM head has two identical rows.
"""

import importlib.util
from pathlib import Path

import pytest
import torch

import annotated_llama as al
from annotated_llama.generate import generate_ids
from annotated_llama.loading import resolve_device_dtype

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake_gpu(monkeypatch):
    """A machine that reports a CUDA GPU of the given compute capability (no CUDA call is really made)."""

    def make(capability: tuple[int, int]):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)

    return make


@pytest.mark.parametrize("capability, dtype", [
    ((7, 5), torch.float16),  # T4: bf16 only emulated
    ((7, 0), torch.float16),  # V100
    ((8, 0), torch.bfloat16),  # A100
    ((8, 9), torch.bfloat16),  # L4
    ((9, 0), torch.bfloat16),  # H100, H200
])
def test_default_dtype_follows_the_compute_capability(fake_gpu, capability, dtype):
    fake_gpu(capability)
    assert resolve_device_dtype() == (torch.device("cuda"), dtype)
    assert resolve_device_dtype("cuda") == (torch.device("cuda"), dtype)


def test_an_explicit_dtype_or_a_cpu_wins(fake_gpu):
    fake_gpu((7, 5))
    assert resolve_device_dtype(dtype="bfloat16") == (torch.device("cuda"), torch.bfloat16)
    assert resolve_device_dtype("cpu") == (torch.device("cpu"), torch.float32)


def test_without_a_gpu_the_default_is_cpu_float32(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device_dtype() == (torch.device("cpu"), torch.float32)


def load_benchmark():
    spec = importlib.util.spec_from_file_location("gpu_decode", ROOT / "benchmarks" / "gpu_decode.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_accepts_a_near_tie_and_stops_on_anything_else():
    bench = load_benchmark()
    torch.manual_seed(0)
    model = al.Transformer(al.ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128,
                                        hidden_dim=160, max_seq_len=64)).eval().requires_grad_(False)
    prompt = torch.tensor([[3, 1, 4, 1, 5]])
    ref = list(generate_ids(model, prompt[0].tolist(), 6))
    assert bench.check_against_readable(model, prompt, ref, ref, "same") == "same"
    other = (ref[2] + 1) % 128
    # a different token where the readable model had no tie: a real mismatch
    with pytest.raises(RuntimeError, match="greedy token 2 .* not a near tie"):
        bench.check_against_readable(model, prompt, ref, ref[:2] + [other] + ref[3:], "broken")
    # make token `other` tie exactly with the greedy choice at every step: its LM-head row a copy of the winner's
    with torch.no_grad():
        model.output.weight[other] = model.output.weight[ref[2]]
    tied = ref[:2] + [other] + ref[3:]
    assert bench.check_against_readable(model, prompt, ref, tied, "tied") == "near tie at token 2"
