"""The LLaMA family beyond the bundled model: Llama 3.1 RoPE scaling from every format, Llama 3.2 presets, Meta's
tiktoken tokenizer, the one-copy transformers reference, hub configs checked first, and the GPU dtype rule.

References are independent of the code under test unless a comment says what they share: transformers'
``LlamaForCausalLM`` loading a checkpoint itself, transformers' own RoPE functions, the ``tokenizers`` library's
BPE, and llama.cpp's rule for ``rope_freqs`` written out here from its converter's description.
"""

import json
import math

import numpy as np
import pytest
import torch
from checkpoints import BYTE_LEVEL_VOCAB, STYLES, random_hf_model, train_byte_level_bpe, write_checkpoint
from helpers import hf_to_meta_state_dict

import annotated_llama as al
from annotated_llama import loading
from annotated_llama.generate import generate_ids
from annotated_llama.reference import RELATIVE_TOLERANCE, as_transformers, check_close, relative_difference
from annotated_llama.weights import CheckpointError, read_gguf

LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


@pytest.fixture(scope="module")
def llama32_dir(tmp_path_factory):
    return write_checkpoint("llama3.2-hf", tmp_path_factory.mktemp("ckpt"))


# --- Llama 3.1 RoPE scaling --------------------------------------------------------------------------------
@pytest.mark.parametrize("factor", [8.0, 32.0])
def test_scaled_frequencies_equal_transformers(factor):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    args = al.ModelArgs.preset("llama3.2-1b").replace(rope_scaling_factor=factor)
    config = al.reference.transformers_config(args)
    want, attention_scaling = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    got = al.model.rope_frequencies(args.head_dim, args.rope_theta, args)
    assert attention_scaling == 1.0  # llama3 scaling changes the frequencies only
    assert torch.allclose(got, want.float(), rtol=1e-6, atol=0)
    plain = al.model.rope_frequencies(args.head_dim, args.rope_theta)
    assert not torch.allclose(got, plain)  # and the scaling did something: slow pairs slowed by the factor
    assert torch.isclose(plain[-1] / got[-1], torch.tensor(factor)) and plain[0] == got[0]


def test_llama3_hf_directory_equals_transformers(llama32_dir):
    from transformers import LlamaForCausalLM

    model, tok = al.load(llama32_dir)
    assert model.args.use_scaled_rope and model.args.rope_scaling_factor == 32.0
    reference = LlamaForCausalLM.from_pretrained(llama32_dir, dtype=torch.float32).eval()
    # positions past original_max / high_freq_factor = 2048 rotate scaled pairs far enough to matter
    torch.manual_seed(0)
    tokens = torch.randint(0, BYTE_LEVEL_VOCAB, (1, 2600))
    with torch.no_grad():
        want = reference(tokens).logits
        got = model(tokens)
    check_close(got, want, torch.float32)
    unscaled = loading.build_model(model.args.replace(use_scaled_rope=False),
                                   {k: v.clone() for k, v in model.state_dict().items()}, "cpu", torch.float32)
    assert relative_difference(unscaled(tokens), want) > 100 * RELATIVE_TOLERANCE[torch.float32]


def test_rope_scaling_from_old_style_config():
    cfg = {"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 10,
           "intermediate_size": 128, "rope_theta": 500000.0,
           "rope_scaling": {k: v for k, v in LLAMA3_ROPE.items() if k != "rope_theta"}}
    args = al.ModelArgs.from_hf_config(cfg)
    assert (args.use_scaled_rope, args.rope_scaling_factor, args.rope_theta) == (True, 32.0, 500000.0)
    with pytest.raises(ValueError, match="'yarn'"):
        al.ModelArgs.from_hf_config(cfg | {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}})


def test_meta_params_use_scaled_rope():
    params = {"dim": 64, "n_layers": 1, "n_heads": 4, "vocab_size": 10, "use_scaled_rope": True,
              "rope_theta": 500000.0}
    args = al.ModelArgs.from_meta_params(params)
    assert args.use_scaled_rope and args.rope_scaling_factor == 8.0  # Meta's reference code's factor
    assert al.ModelArgs.from_meta_params(params | {"rope_scaling_factor": 32}).rope_scaling_factor == 32


def llama_cpp_rope_factors(head_dim, theta, factor, low=1.0, high=4.0, original=8192):
    """The per-frequency divisors llama.cpp's converter stores as ``rope_freqs`` (written from its rule)."""
    out = []
    for j in range(head_dim // 2):
        freq = theta ** (-2 * j / head_dim)
        wavelength = 2 * math.pi / freq
        if wavelength < original / high:
            out.append(1.0)
        elif wavelength > original / low:
            out.append(factor)
        else:
            smooth = (original / wavelength - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def write_gguf(path, hf, rope_factors=None):
    """A float32 llama GGUF from a transformers model (names and Meta's q/k layout as llama.cpp writes them)."""
    import gguf

    c = hf.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_embedding_length(c.hidden_size)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_rope_freq_base(c.rope_parameters["rope_theta"])
    writer.add_context_length(c.max_position_embeddings)
    writer.add_rope_dimension_count(c.head_dim)
    writer.add_vocab_size(c.vocab_size)
    names = {"tok_embeddings": "token_embd", "norm": "output_norm", "output": "output", "attention.wq": "attn_q",
             "attention.wk": "attn_k", "attention.wv": "attn_v", "attention.wo": "attn_output",
             "feed_forward.w1": "ffn_gate", "feed_forward.w2": "ffn_down", "feed_forward.w3": "ffn_up",
             "attention_norm": "attn_norm", "ffn_norm": "ffn_norm"}
    for name, t in hf_to_meta_state_dict(hf).items():
        parts = name[: -len(".weight")].split(".")
        if parts[0] == "layers":
            gguf_name = f"blk.{parts[1]}.{names['.'.join(parts[2:])]}.weight"
        else:
            gguf_name = names[parts[0]] + ".weight"
        writer.add_tensor(gguf_name, t.float().numpy())
    if rope_factors is not None:
        writer.add_tensor("rope_freqs.weight", rope_factors)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_rope_freqs_and_dtype(tmp_path):
    config = dict(STYLES["llama3.2-hf"][1], tie_word_embeddings=False)
    hf = random_hf_model(config)
    write_gguf(tmp_path / "m.gguf", hf, llama_cpp_rope_factors(32, 500000.0, 32.0))
    args, sd = read_gguf(tmp_path / "m.gguf", dtype=torch.bfloat16)
    assert args.use_scaled_rope and args.rope_scaling_factor == pytest.approx(32.0)
    assert {t.dtype for t in sd.values()} == {torch.bfloat16}  # converted tensor by tensor, not afterwards
    args, sd = read_gguf(tmp_path / "m.gguf")
    model = loading.build_model(args, sd, "cpu", torch.float32)
    tokens = torch.randint(0, 1000, (1, 2600), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        check_close(model(tokens), hf(tokens).logits, torch.float32)
    # divisors that follow no known rule are refused, not silently used
    write_gguf(tmp_path / "odd.gguf", hf, np.linspace(1, 5, 16, dtype=np.float32))
    with pytest.raises(CheckpointError, match="rope_freqs"):
        read_gguf(tmp_path / "odd.gguf")


# --- presets ----------------------------------------------------------------------------------------------
# Published counts (transformers' models of each config.json on the meta device; Meta's model cards).
PUBLISHED = {"llama3.2-1b": 1_235_814_400, "llama3.2-3b": 3_212_749_824, "llama3.1-8b": 8_030_261_248,
             "tinyllama-1.1b": 1_100_048_384, "codellama-7b": 6_738_546_688}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_new_presets_count(name):
    from transformers import LlamaForCausalLM

    args = al.ModelArgs.preset(name)
    with torch.device("meta"):  # transformers' model from the preset's hyperparameters, no weights
        reference = sum(p.numel() for p in LlamaForCausalLM(al.reference.transformers_config(args)).parameters())
    assert al.count_parameters(args) == reference == PUBLISHED[name]


# --- Meta's Llama 3 tokenizer (tiktoken) --------------------------------------------------------------------
def test_tiktoken_tokenizer_equals_the_same_bpe_in_tokenizers(tmp_path):
    """The tiktoken file is written from a BPE trained with ``tokenizers``; both libraries must cut any text
    into the same byte strings (ids differ: tiktoken ranks bytes by value, the trainer by first sight)."""
    from checkpoints import write_tiktoken_file

    write_tiktoken_file(tmp_path / "tokenizer.model")
    tok = al.load_tokenizer(tmp_path / "tokenizer.model")
    assert type(tok).__name__ == "TiktokenTokenizer" and tok.vocab_size == BYTE_LEVEL_VOCAB + 256
    reference = train_byte_level_bpe()
    texts = ["The capital of France is Paris.", "  indented\n\nlines 12345 and 3.14159", "naïve café ☕ 日本語",
             "it's THEY'RE we'll", "<|begin_of_text|> typed by a user"]
    for text in texts:
        ours = [tok.enc.decode_single_token_bytes(i) for i in tok.encode(text, bos=False)]
        theirs = [bytes(al.tokenizer._CHAR_TO_BYTE[c] for c in piece) for piece in reference.encode(text).tokens]
        assert ours == theirs, text
        assert tok.decode(tok.encode(text)) == "<|begin_of_text|>" + text
    assert tok.encode("hi")[0] == tok.bos_id == BYTE_LEVEL_VOCAB  # BOS first, as Meta's generate does
    (the,) = tok.encode(" the", bos=False)  # one token, shown in the byte-level spelling ("Ġ" is a space)
    assert tok.id_to_piece(the) == "Ġthe" and tok.piece_to_id("Ġthe") == the


def test_meta_llama3_directory(tmp_path):
    from transformers import LlamaForCausalLM

    directory = write_checkpoint("llama3-meta", tmp_path)
    params = json.loads((directory / "params.json").read_text())
    assert params["use_scaled_rope"] and params["rope_scaling_factor"] == 32.0
    model, tok = al.load(directory)
    assert type(tok).__name__ == "TiktokenTokenizer"
    hf = random_hf_model(dict(STYLES["llama3.2-hf"][1], tie_word_embeddings=False, vocab_size=BYTE_LEVEL_VOCAB + 256))
    assert isinstance(hf, LlamaForCausalLM)
    tokens = torch.tensor([tok.encode("The capital of France is Paris. " * 100)])
    with torch.no_grad():
        check_close(model(tokens), hf(tokens).logits, torch.float32)


# --- one copy of the weights -------------------------------------------------------------------------------
def test_as_transformers_shares_storage_and_matches(llama32_dir):
    from transformers import LlamaForCausalLM

    model, _ = al.load(llama32_dir)
    ours_ptrs = {p.data_ptr() for p in model.parameters()}
    hf = as_transformers(model)
    plain = [p for n, p in hf.named_parameters() if "parametrizations" not in n]
    assert plain and all(p.data_ptr() in ours_ptrs for p in plain)  # every plain weight is our storage
    originals = [p for n, p in hf.named_parameters() if n.endswith("original")]
    assert len(originals) == 2 * model.args.n_layers and all(p.data_ptr() in ours_ptrs for p in originals)
    assert all(not p.requires_grad for p in model.parameters())  # our model untouched
    independent = LlamaForCausalLM.from_pretrained(llama32_dir, dtype=torch.float32)
    tokens = torch.randint(0, BYTE_LEVEL_VOCAB, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(hf(tokens).logits, independent(tokens).logits)  # the same weights, as transformers sees
        check_close(model(tokens), hf(tokens).logits, torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_within_the_stated_tolerance(llama32_dir, dtype):
    model, _ = al.load(llama32_dir, dtype=dtype)
    tokens = torch.randint(0, BYTE_LEVEL_VOCAB, (1, 64), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        check_close(model(tokens), as_transformers(model)(tokens).logits, dtype)


def test_last_only_logits(llama32_dir):
    model, _ = al.load(llama32_dir)
    tokens = torch.randint(0, BYTE_LEVEL_VOCAB, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(tokens)
        last = model(tokens, last_only=True)
    assert last.shape == (2, 1, model.args.vocab_size) and torch.allclose(last[:, 0], full[:, -1], atol=1e-5)


# --- a hub id: config first -----------------------------------------------------------------------------------
def test_hub_config_is_checked_before_any_weight(tmp_path, monkeypatch):
    import huggingface_hub

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    fetched = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda repo, name, **kw: fetched.append(name) or str(tmp_path / name))
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda *a, **kw: pytest.fail("weights were requested for a model that cannot run"))
    with pytest.raises(CheckpointError, match="openai-community/gpt2: .*model_type 'gpt2'"):
        al.load("openai-community/gpt2")
    assert fetched == ["config.json"]


# --- the dtype rule on CUDA -----------------------------------------------------------------------------------
@pytest.mark.parametrize("capability, want", [((7, 5), torch.float16), ((8, 0), torch.bfloat16),
                                              ((9, 0), torch.bfloat16), ((6, 1), torch.float16)])
def test_default_dtype_on_cuda_follows_native_bf16(monkeypatch, capability, want):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **kw: True)  # what a T4 answers; ignored
    device, dtype = loading.resolve_device_dtype()
    assert device.type == "cuda" and dtype == want
    assert loading.resolve_device_dtype("cpu")[1] == torch.float32


def test_generation_never_picks_an_id_the_tokenizer_lacks(llama32_dir):
    model, tok = al.load(llama32_dir)  # 1,024 embedding rows, 1,002 tokens
    assert tok.vocab_size < model.args.vocab_size
    for seed in range(8):  # random weights put mass on the spare rows; sampling must never pick them
        text = al.generate(model, tok, "The capital", max_new_tokens=12, temperature=2.0, seed=seed)
        assert isinstance(text, str)
    unmasked = list(generate_ids(model, tok.encode("The"), 40, temperature=2.0, seed=0))
    assert max(unmasked) >= tok.vocab_size  # the spare rows do get picked when nothing masks them
    masked = list(generate_ids(model, tok.encode("The"), 40, temperature=2.0, seed=0, n_tokens=tok.vocab_size))
    assert max(masked) < tok.vocab_size
