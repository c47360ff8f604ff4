"""The bundled SmolLM2-135M: our logits against transformers' LlamaForCausalLM loading the same GGUF,
generation, the CLI, and clear errors for prompts that cannot work."""

import subprocess
import sys

import pytest
import torch

import annotated_llama as al
from annotated_llama import assets

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundled():
    return al.load("smollm2-135m", device="cpu")


@pytest.fixture(scope="module")
def reference():
    from transformers import AutoTokenizer, LlamaForCausalLM

    directory, name = str(assets.cache_dir()), assets.SMOLLM2_GGUF.name
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    model = LlamaForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32).eval()
    return model, tokenizer


def test_parameter_count(bundled):
    model, _ = bundled
    # tied embedding counted once; 134,515,008 is the published SmolLM2-135M count
    n = sum(p.numel() for p in model.parameters())
    assert n == al.count_parameters(model.args) == 134_515_008


def test_logits_match_transformers_on_the_same_gguf(bundled, reference):
    model, tok = bundled
    hf, hf_tok = reference
    text = "The capital of France is Paris. Rome is the capital of Italy, and 12345 + 678 = 13023!"
    ids = tok.encode(text)
    assert ids == hf_tok(text).input_ids
    tokens = torch.tensor([ids])
    with torch.no_grad():
        diff = (model(tokens) - hf(tokens).logits).abs().max().item()
    assert diff <= 1e-4, f"max abs logit difference {diff:.2e}"


def test_greedy_generation_says_paris(bundled):
    model, tok = bundled
    text = al.generate(model, tok, "The capital of France is", max_new_tokens=5)
    assert text.startswith(" Paris"), text


def test_greedy_matches_transformers_generate(bundled, reference):
    model, tok = bundled
    hf, _ = reference
    prompt = "Once upon a time"
    ours = al.generate(model, tok, prompt, max_new_tokens=20)
    ids = torch.tensor([tok.encode(prompt)])
    with torch.no_grad():
        theirs = hf.generate(ids, max_new_tokens=20, do_sample=False)
    assert ours == tok.decode(theirs[0, ids.shape[1]:].tolist())


def test_sampling_is_seeded(bundled):
    model, tok = bundled
    a = al.generate(model, tok, "My favourite food is", max_new_tokens=12, temperature=0.9, top_p=0.9, seed=7)
    b = al.generate(model, tok, "My favourite food is", max_new_tokens=12, temperature=0.9, top_p=0.9, seed=7)
    assert a == b and len(a) > 0


def test_prompt_past_the_context(bundled):
    model, tok = bundled
    with pytest.raises(ValueError, match="> the model's context of 8192"):
        al.generate(model, tok, "word " * 8200, max_new_tokens=1)


def test_empty_prompt(bundled):
    model, tok = bundled
    with pytest.raises(ValueError, match="prompt is empty"):
        al.generate(model, tok, "", max_new_tokens=3)


def test_cli_streams_paris():
    out = subprocess.run([sys.executable, "-m", "annotated_llama", "generate", "The capital of France is",
                          "--max-new-tokens", "3"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("The capital of France is Paris"), out.stdout


def test_cli_unknown_model():
    out = subprocess.run([sys.executable, "-m", "annotated_llama", "generate", "hi", "--model", "nope"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "unknown model 'nope'" in out.stderr
