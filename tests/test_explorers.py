"""The explorers' Python side: the data builders, the sampling reference, and the stored chapter outputs.

What the page's script does with the data is tested in a real browser by ``test_browser.py``; here the data
itself is checked against independent computations (torch on the same tensors, worked examples by hand),
and the outputs stored in the chapters against this package's current script (nbval does not compare the
explorer cells, see ``annotated_llama/explorers.py``).
"""

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from annotated_llama import explorers
from annotated_llama.model import apply_rotary_emb, precompute_freqs_cis
from explorer_helpers import package_probabilities

ROOT = Path(__file__).resolve().parents[1]
# chapter -> the explorer kinds it shows, in page order
CHAPTER_EXPLORERS = {
    "03_embeddings": ["embedding_map"],
    "05_rope": ["rope"],
    "06_attention": ["attention"],
    "09_model_and_generation": ["sampling"],
    # plus chapter 10's explorers for each bigger model stored beside it (python -m annotated_llama explore)
    "10_looking_inside": ["logit_lens", "attention"]
    + ["logit_lens", "attention"] * len(list((ROOT / "notebooks" / "explorers").glob("10_*.json"))),
}


def _causal_probs(n_layers=3, n_heads=2, seq=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(n_layers, n_heads, seq, seq, generator=g)
    mask = torch.ones(seq, seq, dtype=torch.bool).triu(1)
    return scores.masked_fill(mask, float("-inf")).softmax(-1)  # [L, H, S, S], rows sum to 1


def test_attention_data_round_trips_the_lower_triangle():
    probs = _causal_probs()
    ex = explorers.attention(probs, [f" t{i}" for i in range(5)], layer=2, head=1)
    d = ex.data
    assert d["layer"] == 2 and d["head"] == 1 and d["layers"] == [0, 1, 2]
    for layer in range(3):
        for head in range(2):
            tri = d["w"][layer][head]
            assert len(tri) == 5 * 6 // 2
            for q in range(5):  # row q holds keys 0..q, starting at q(q+1)/2
                row = torch.tensor(tri[q * (q + 1) // 2: q * (q + 1) // 2 + q + 1]) / d["scale"]
                assert torch.allclose(row, probs[layer, head, q, : q + 1], atol=0.5 / d["scale"])
            # the sink column: mean weight on key 0 over queries 1.. (query 0 can only see key 0)
            assert abs(d["sink"][layer][head] / d["scale"] - probs[layer, head, 1:, 0].mean().item()) <= 0.5e-3


def test_attention_rejects_mismatched_tokens():
    with pytest.raises(ValueError, match="token texts"):
        explorers.attention(_causal_probs(), ["a", "b"])
    with pytest.raises(ValueError, match=r"\[n_layers, n_heads, seq, seq\]"):
        explorers.attention(torch.ones(2, 3, 4), ["a"] * 4)


def test_logit_lens_data_names_each_cells_top_tokens():
    top_ids = torch.tensor([[[5, 7], [7, 9]], [[9, 5], [5, 7]]])  # [rows 2, seq 2, k 2]
    ll = SimpleNamespace(labels=["embed", "layer 0"], top_ids=top_ids,
                         top_probs=torch.tensor([[[0.5, 0.25], [0.6, 0.1]], [[0.9, 0.05], [0.7, 0.2]]]),
                         target=7, target_rank=torch.tensor([[2, 1], [40, 2]]),
                         target_prob=torch.tensor([[0.25, 0.6], [1.234e-5, 0.2]]))
    ex = explorers.logit_lens(ll, lambda i: f"<{i}>", ["a", "b"])
    d = ex.data
    names = [[[d["vocab"][j] for j in cell] for cell in row] for row in d["top"]]
    assert names == [[["<5>", "<7>"], ["<7>", "<9>"]], [["<9>", "<5>"], ["<5>", "<7>"]]]
    assert d["p"][1][0] == [900, 50] and d["rank"] == [[2, 1], [40, 2]]
    assert d["target"] == "<7>" and d["target_p"][1][0] == pytest.approx(1.23e-5)


def test_sampling_data_is_the_top_n_logits_and_their_mass():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(300, generator=g) * 3
    ex = explorers.sampling(logits, lambda i: f"t{i}", prompt="p", n=20)
    d = ex.data
    order = sorted(range(300), key=lambda i: -logits[i].item())[:20]
    assert d["ids"] == order and d["tokens"] == [f"t{i}" for i in order]
    assert d["logits"] == pytest.approx([logits[i].item() for i in order], abs=0.5e-4)
    mass = sum(torch.exp(logits[i] - torch.logsumexp(logits, 0)).item() for i in order)
    assert d["full_mass"] == pytest.approx(mass, abs=1e-4)
    assert explorers.stored_logits(ex).shape == (1, 20)


def test_package_probabilities_worked_example():
    # softmax([2, 1, 0]) = [0.665, 0.245, 0.090]; the tokens ranked above hold [0, 0.665, 0.910]
    z = torch.tensor([[2.0, 1.0, 0.0]])
    p = torch.tensor([2.0, 1.0, 0.0]).exp()
    p = p / p.sum()
    assert package_probabilities(z, 1.0, 0.5).tolist() == [1.0, 0.0, 0.0]
    expected = torch.tensor([p[0], p[1], 0.0]) / (p[0] + p[1])
    assert torch.allclose(package_probabilities(z, 1.0, 0.8), expected, atol=1e-6)
    assert torch.allclose(package_probabilities(z, 1.0, 1.0), p, atol=1e-6)
    # T = 2 halves the logits: softmax([1, 0.5, 0])
    half = torch.tensor([1.0, 0.5, 0.0]).exp()
    assert torch.allclose(package_probabilities(z, 2.0, 1.0), half / half.sum(), atol=1e-6)


def test_rope_score_matches_the_package_rotation():
    head_dim, theta_base = 16, 10000.0
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(head_dim, generator=g), torch.randn(head_dim, generator=g)
    freqs = precompute_freqs_cis(head_dim, 64, theta_base)  # [64, head_dim/2]: the package's table
    theta = 1.0 / theta_base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    d = explorers.rope(q, k, theta, max_pos=63, max_distance=8).data
    qs = torch.tensor(d["q"]).view(1, 1, 1, -1)
    ks = torch.tensor(d["k"]).view(1, 1, 1, -1)
    for m, n in [(0, 0), (5, 2), (40, 31), (63, 10)]:
        ours = explorers.rope_score(d, m, n)
        package = (apply_rotary_emb(qs, freqs[m: m + 1]) * apply_rotary_emb(ks, freqs[n: n + 1])).sum().item()
        assert ours == pytest.approx(package, abs=1e-4 * q.norm().item() * k.norm().item())
    assert explorers.rope_score(d, 12, 9) == pytest.approx(explorers.rope_score(d, 50, 47), rel=1e-9)


def test_embedding_map_neighbours_by_cosine():
    rows = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.0, 1.0, 0.0], [0.0, 0.9, 0.4], [-1.0, 0.0, 0.0]])
    labels = [" a", " b", " c", " d", " e"]
    d = explorers.embedding_map(labels, torch.zeros(5, 2), rows, groups={"g": ["a", "c"]}, k=2).data
    assert d["nn"][0][0] == 1 and d["nn"][2][0] == 3 and d["nn"][4][1] != 4  # never itself
    assert d["group"] == [0, -1, 0, -1, -1] and d["groups"] == ["g"]
    cos = torch.nn.functional.cosine_similarity(rows[0], rows[1], dim=0).item()
    assert d["nn_cos"][0][0] == round(cos * 1000)


def test_html_is_deterministic_and_self_contained():
    a = explorers.attention(_causal_probs(), [f" </script>{i}" for i in range(5)])
    b = explorers.attention(_causal_probs(), [f" </script>{i}" for i in range(5)])
    ha, hb = a.to_html(), b.to_html()
    assert a.to_html() == ha  # the same object renders the same every time
    ida, idb = re.search(r'id="([^"]+)"', ha)[1], re.search(r'id="([^"]+)"', hb)[1]
    assert ida != idb and ha.replace(ida, "X") == hb.replace(idb, "X")  # only the counter differs
    assert re.fullmatch(r"al-x-attention-\d+", ida)
    assert ha.count("</script>") == 2  # the data's "</script>" texts are escaped; the two real closers stay
    assert not re.search(r"""(src|href)\s*=\s*["']?https?:""", ha)  # nothing fetched from the network
    data = json.loads(re.search(r'<script type="application/json" class="al-data">(.*?)</script>', ha, re.S)[1])
    assert data["tokens"][0] == " </script>0"


def _stored_explorers(chapter: str) -> list[str]:
    nb = json.loads((ROOT / "notebooks" / f"{chapter}.ipynb").read_text())
    found = []
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            text = out.get("data", {}).get("text/html")
            if text and "al-explorer" in "".join(text):
                assert "nbval-ignore-output" in cell["metadata"].get("tags", []), chapter
                found.append("".join(text))
    return found


@pytest.mark.parametrize("chapter", sorted(CHAPTER_EXPLORERS))
def test_stored_outputs_carry_the_current_script(chapter):
    """The explorer cells are not compared by nbval; this catches a chapter stored with an older script."""
    outputs = _stored_explorers(chapter)
    kinds = [re.search(r'data-kind="(\w+)"', h)[1] for h in outputs]
    assert kinds == CHAPTER_EXPLORERS[chapter], f"{chapter}: re-run scripts/execute_notebooks.sh"
    for h in outputs:
        assert explorers.SCRIPT in h, f"{chapter}: stored with an older script; re-execute the chapter"
        json.loads(re.search(r'class="al-data">(.*?)</script>', h, re.S)[1])
        assert len(h.encode()) < 3_000_000


def test_save_and_load_round_trip(tmp_path):
    probs = _causal_probs()
    saved = [explorers.attention(probs, [f" t{i}" for i in range(5)], title="five tokens")]
    explorers.save(tmp_path / "10_x.json", "some/model", saved, note="bfloat16 on cuda")
    source, loaded = explorers.load_saved(tmp_path / "10_x.json")
    assert source == "some/model" and [e.kind for e in loaded] == ["attention"]
    assert loaded[0].data["w"] == saved[0].data["w"]
    assert loaded[0].data["title"] == "some/model (bfloat16 on cuda): five tokens"
    assert "al-explorer" in loaded[0].to_html()


@pytest.mark.slow
def test_explore_command_on_the_bundled_model(tmp_path):
    """The GPU command, run here on the bundled model: its lens ends on the model's own next token."""
    import annotated_llama as al
    from annotated_llama.__main__ import main

    out = tmp_path / "10_smollm2.json"
    assert main(["explore", "--model", "smollm2-135m", "--out", str(out), "--device", "cpu"]) == 0
    source, (lens_x, attention_x) = explorers.load_saved(out)
    model, tok = al.load("smollm2-135m", device="cpu")
    ids = tok.encode(explorers.LENS_PROMPT)
    with torch.inference_mode():
        own = model(torch.tensor([ids]))[0, -1].argmax().item()  # the model's own prediction, no lens
    d = lens_x.data
    assert d["vocab"][d["top"][-1][-1][0]] == tok.decode([own])
    assert d["tokens"] == [tok.decode([i]) for i in ids]
    a = attention_x.data
    seq = len(tok.encode(explorers.SENTENCE))
    assert len(a["layers"]) == model.args.n_layers and a["n_heads"] == model.args.n_heads
    last = a["w"][-1][-1][-seq:]  # the last query's row of the last head: its weights sum to 1
    assert abs(sum(last) - a["scale"]) <= seq
