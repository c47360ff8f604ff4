"""Interactive explorers: figures a reader can touch, in the static book, in Jupyter and in Colab, offline.

Each builder takes what a chapter computed (tensors, token texts) and returns an :class:`Explorer`: a data
dict plus ``summary`` (short, stable text the chapter prints so that nbval compares it) and ``_repr_html_``
(what the page shows). Five kinds: ``attention`` (pick a layer and a head, hover a query), ``logit_lens``
(hover a layer × position cell), ``sampling`` (temperature and top-p sliders over the top tokens),
``rope`` (move a query/key pair along the positions) and ``embedding_map`` (a 2-D map with a search box).

Design: the HTML output is one ``<div>`` holding the data as inline JSON, followed by one ``<script>``: a
small hand-written library (plain DOM and SVG, no dependency, about 20 KB) inlined into every output. Why not
Plotly or Vega-Lite: their JavaScript is megabytes, and it must either come from a CDN (not offline) or be
copied into every page; and a script shipped as a static file of the book (``book/_static``) would not exist
in Jupyter or Colab, where the same output must work. Inlined, the output carries everything it needs: the
page built from the stored notebook works when opened as a file, with no network. The script defines its
library once per page (``window.ALX``) and then mounts its own ``<div>``, found by an id made from the kind
and a counter (no random ids, no timestamps), so an output is the same every time a chapter runs on the same
numbers. Floats are quantised (weights and probabilities as integers in thousandths, coordinates to 3
decimals) to keep pages small.

nbval: the explorer's data comes from a forward pass, so its last digits can change with the number of
threads; the chapters therefore print each explorer's ``summary`` in a compared cell and tag the cell that
displays the HTML ``nbval-ignore-output``. ``tests/test_explorers.py`` checks that the stored HTML carries
this module's current script, and ``tests/test_browser.py`` that the built pages work in Chromium.
"""

from __future__ import annotations

import html
import itertools
import json
import math
import re

import torch

SCALE = 1000  # weights and probabilities are stored as integers in thousandths
_counter = itertools.count(1)


class Explorer:
    """One interactive figure: ``kind``, its ``data`` (JSON-ready) and a stable text ``summary``."""

    def __init__(self, kind: str, data: dict, summary: str):
        self.kind, self.data, self.summary = kind, data, summary
        self._id: str | None = None

    def to_json(self) -> str:
        # "</" is escaped so that no token text can close the <script> element that holds the JSON.
        return json.dumps(self.data, ensure_ascii=True, separators=(",", ":")).replace("</", "<\\/")

    def to_html(self) -> str:
        if self._id is None:  # one id per explorer object, from a counter: deterministic in a fresh kernel
            self._id = f"al-x-{self.kind}-{next(_counter)}"
        return (f'<div class="al-explorer" id="{self._id}" data-kind="{self.kind}" '
                f'style="font:13px/1.4 sans-serif;color:#222;background:#fff;border:1px solid #ddd;'
                f'border-radius:4px;padding:8px;margin:8px 0;overflow-x:auto">'
                f'<script type="application/json" class="al-data">{self.to_json()}</script>'
                f'<noscript>{html.escape(self.summary)}</noscript></div>\n'
                f'<script>{SCRIPT}\nwindow.ALX.mount("{self._id}");</script>')

    def _repr_html_(self) -> str:
        return self.to_html()

    def __repr__(self) -> str:
        return self.summary


def _q(t: torch.Tensor) -> list:
    """Values in [0, 1] -> nested lists of integers in thousandths."""
    return (t.detach().float().cpu() * SCALE).round().to(torch.int64).tolist()


def _r(t: torch.Tensor, digits: int = 3) -> list:
    return [round(float(v), digits) for v in t.detach().float().cpu().flatten()]


# --- 1. attention -------------------------------------------------------------------------------------------

def attention(probs: torch.Tensor, tokens: list[str], title: str = "", layer: int = 0, head: int = 0,
              layers: list[int] | None = None) -> Explorer:
    """``probs`` [n_layers, n_heads, seq, seq] attention weights (rows sum to 1); ``tokens`` the seq texts.

    ``layers``: the layer index of each row of ``probs`` (default 0, 1, ...). Only the lower triangle is
    stored: the causal mask makes the rest zero."""
    if probs.dim() != 4 or probs.shape[-1] != probs.shape[-2]:
        raise ValueError(f"attention: probs must be [n_layers, n_heads, seq, seq], got {tuple(probs.shape)}")
    n_layers, n_heads, seq, _ = probs.shape
    if len(tokens) != seq:
        raise ValueError(f"attention: {len(tokens)} token texts for a sequence of {seq}; pass one per position")
    layers = list(range(n_layers)) if layers is None else list(layers)
    rows, cols = torch.tril_indices(seq, seq)  # the lower triangle, row by row
    tri = probs.detach().float().cpu()[:, :, rows, cols]  # [n_layers, n_heads, seq*(seq+1)/2]
    # The sink column: each head's mean weight on the first token, over the queries that see more than it.
    sink = probs.detach().float().cpu()[:, :, 1:, 0].mean(-1) if seq > 1 else torch.ones(n_layers, n_heads)
    data = {"title": title, "tokens": list(tokens), "layers": layers, "n_heads": n_heads, "scale": SCALE,
            "w": _q(tri), "sink": _q(sink), "layer": layers.index(layer) if layer in layers else 0,
            "head": min(head, n_heads - 1)}
    summary = (f"attention explorer: {n_layers} layers x {n_heads} heads, {seq} tokens "
               f"({' '.join(repr(t) for t in tokens[:6])}{' ...' if seq > 6 else ''}); "
               f"weights in thousandths, lower triangle only")
    return Explorer("attention", data, summary)


# --- 2. logit lens ------------------------------------------------------------------------------------------

def logit_lens(ll, token_text, tokens: list[str], target_text: str | None = None) -> Explorer:
    """From ``annotated_llama.lens.logit_lens``'s result: the top-k per layer and position, and the target.

    ``token_text(id) -> str`` names a token; ``tokens`` are the input's texts (one per position)."""
    rows, seq, k = ll.top_ids.shape
    if len(tokens) != seq:
        raise ValueError(f"logit_lens: {len(tokens)} token texts for {seq} positions; pass one per position")
    vocab: dict[int, int] = {}  # token id -> index into the texts stored once
    ids = [[[vocab.setdefault(int(i), len(vocab)) for i in cell] for cell in row] for row in ll.top_ids.tolist()]
    data = {"title": "", "rows": list(ll.labels), "tokens": list(tokens), "k": k, "scale": SCALE,
            "vocab": [token_text(i) for i in vocab], "top": ids, "p": _q(ll.top_probs)}
    if ll.target is not None and ll.target_rank is not None:
        data["target"] = target_text if target_text is not None else token_text(ll.target)
        data["rank"] = ll.target_rank.cpu().tolist()
        data["target_p"] = [[float(f"{v:.3g}") for v in row] for row in ll.target_prob.float().cpu().tolist()]
    summary = (f"logit-lens explorer: {rows} rows ({ll.labels[0]} .. {ll.labels[-1]}) x {seq} positions, "
               f"top {k} per cell" + (f", target {data['target']!r}" if "target" in data else ""))
    return Explorer("logit_lens", data, summary)


# --- 3. sampling --------------------------------------------------------------------------------------------

def sampling(logits: torch.Tensor, token_text, prompt: str = "", n: int = 50, temperature: float = 1.0,
             top_p: float = 0.9) -> Explorer:
    """The ``n`` largest of one position's ``logits`` [vocab], for temperature and top-p sliders.

    The page computes softmax, the top-p cut and the renormalisation over these ``n`` tokens only (the rest
    of the vocabulary is left out); ``full_mass`` says how much of the full distribution at T = 1 they hold.
    The stored logits are rounded to 4 decimals: ``stored_logits`` gives them back as a tensor, so a test
    can run the package's ``sample_next`` on exactly what the page uses."""
    z = logits.detach().float().cpu().flatten()  # [vocab]
    n = min(n, z.numel())
    top, ids = z.topk(n)  # [n], sorted, largest first
    full_mass = torch.softmax(z, -1)[ids].sum().item()
    data = {"prompt": prompt, "ids": ids.tolist(), "tokens": [token_text(int(i)) for i in ids],
            "logits": _r(top, 4), "full_mass": round(full_mass, 4), "temperature": temperature, "top_p": top_p}
    summary = (f"sampling explorer: the top {n} next tokens after {prompt!r} "
               f"(from {data['tokens'][0]!r}); sliders start at T = {temperature}, top-p = {top_p}")
    return Explorer("sampling", data, summary)


def stored_logits(explorer: Explorer) -> torch.Tensor:
    """The sampling explorer's logits as stored in the page: [1, n] float32."""
    return torch.tensor([explorer.data["logits"]], dtype=torch.float32)


# --- 4. RoPE ------------------------------------------------------------------------------------------------

def rope(q: torch.Tensor, k: torch.Tensor, theta: torch.Tensor, q_text: str = "q", k_text: str = "k",
         max_pos: int = 512, max_distance: int = 32, pairs: list[int] | None = None) -> Explorer:
    """A query and a key [head_dim] before RoPE (Meta's layout: pairs (2j, 2j+1)) and the angle per position
    of each pair, ``theta`` [head_dim/2] (the model's own, scaling included). The page rotates both and
    shows the score q_m · k_n (no 1/sqrt(head_dim))."""
    hd = q.numel()
    if k.numel() != hd or theta.numel() * 2 != hd:
        raise ValueError(f"rope: q [{hd}], k [{k.numel()}] and theta [{theta.numel()}] must be [d], [d], [d/2]")
    pairs = pairs if pairs is not None else sorted({0, hd // 16, hd // 4})
    sig = lambda t, n: [float(f"{v:.{n}g}") for v in t.detach().double().cpu().flatten().tolist()]  # noqa: E731
    # significant digits, not decimals: the score stays within 1e-4 of |q||k| whatever the vectors' scale
    data = {"q": sig(q, 5), "k": sig(k, 5), "theta": sig(theta, 6),
            "q_text": q_text, "k_text": k_text, "max_pos": int(max_pos), "max_distance": int(max_distance),
            "pairs": pairs}
    summary = (f"RoPE explorer: query {q_text!r} and key {k_text!r}, head_dim {hd}, positions 0-{max_pos}, "
               f"distances 0-{max_distance}; circles for pairs {pairs}")
    return Explorer("rope", data, summary)


def rope_score(data: dict, m: int, n: int) -> float:
    """The score the RoPE explorer shows for the query at m and the key at n, computed from its data in
    float64 with complex numbers (a reference independent of the page's script)."""
    q = torch.tensor(data["q"], dtype=torch.float64).view(-1, 2)
    k = torch.tensor(data["k"], dtype=torch.float64).view(-1, 2)
    theta = torch.tensor(data["theta"], dtype=torch.float64)
    qc = torch.complex(q[:, 0], q[:, 1]) * torch.polar(torch.ones_like(theta), m * theta)
    kc = torch.complex(k[:, 0], k[:, 1]) * torch.polar(torch.ones_like(theta), n * theta)
    return float((qc * kc.conj()).real.sum())


# --- 5. embedding map ---------------------------------------------------------------------------------------

def word_tokens(tokenizer, limit: int = 400, pattern: str = r"[A-Za-z]{3,}") -> list[tuple[int, str]]:
    """The first ``limit`` token ids (in id order) that stand for a whole word: a leading space, then text
    matching ``pattern``. Decoded after a plain letter, so SentencePiece keeps the space (see chapter 3)."""
    letter = tokenizer.encode("a", bos=False)[-1:]
    prefix = len(tokenizer.decode(letter))
    word = re.compile(" " + pattern)
    found, seen = [], set()
    for i in range(tokenizer.vocab_size):
        text = tokenizer.decode(letter + [i])[prefix:]
        if word.fullmatch(text) and text not in seen:
            seen.add(text)
            found.append((i, text))
            if len(found) == limit:
                break
    return found


def embedding_map(labels: list[str], xy: torch.Tensor, rows: torch.Tensor, groups: dict[str, list[str]] | None = None,
                  colours: dict[str, str] | None = None, k: int = 5, share: float | None = None) -> Explorer:
    """Points ``xy`` [n, 2] (a projection) named ``labels``; ``rows`` [n, dim] the embedding rows, from which
    each point's ``k`` nearest neighbours among the n (cosine similarity) are found. ``groups`` colours
    some labels (group name -> labels)."""
    n = len(labels)
    if xy.shape != (n, 2) or rows.shape[0] != n:
        raise ValueError(f"embedding_map: {n} labels, xy {tuple(xy.shape)}, rows {tuple(rows.shape)}: "
                         "need xy [n, 2] and rows [n, dim]")
    unit = torch.nn.functional.normalize(rows.detach().float().cpu(), dim=-1)
    cos = unit @ unit.T  # [n, n]
    cos.fill_diagonal_(-2.0)  # a point is not its own neighbour
    k = min(k, n - 1)
    nn_cos, nn = cos.topk(k, dim=-1)  # [n, k]
    groups = groups or {}
    names = list(groups)
    member = {label: names.index(g) for g in names for label in groups[g]}
    data = {"labels": list(labels), "xy": [_r(p, 3) for p in xy.detach().float().cpu()],
            "group": [member.get(label.strip(), -1) for label in labels], "groups": names,
            "colours": [(colours or {}).get(g, "#1f77b4") for g in names], "nn": nn.tolist(),
            "nn_cos": _q(nn_cos), "scale": SCALE, "share": None if share is None else round(share, 3)}
    summary = (f"embedding map: {n} tokens ({', '.join(repr(x) for x in labels[:5])}, ...), "
               f"{k} nearest neighbours each by cosine in the full embedding; groups {names}")
    return Explorer("embedding_map", data, summary)


# --- stored data from a bigger model -----------------------------------------------------------------------
# Chapter 10's explorers for a model too big for the book's CI (Llama-2-7B on a GPU): computed by
# ``python -m annotated_llama explore --model ID --out notebooks/explorers/10_<name>.json`` and shown by the
# chapter when the file is there. The prompts are chapter 10's.

LENS_PROMPT = "The capital of France is"
LENS_TARGET = " Paris"
SENTENCE = "The quick brown fox jumps over the lazy dog. It was a sunny day, and the fox was happy."


@torch.inference_mode()
def chapter10(model, tokenizer) -> list[Explorer]:
    """The logit lens of LENS_PROMPT (target: the first token of LENS_TARGET) and every head's attention on
    SENTENCE, for ``model``: what chapter 10 computes, in one call."""
    from . import lens

    def text(i):  # a spare embedding row past the tokenizer's last token has no text
        return tokenizer.decode([int(i)]) if int(i) < tokenizer.vocab_size else f"<{int(i)}>"

    ids = tokenizer.encode(LENS_PROMPT)
    target = tokenizer.encode(LENS_PROMPT + LENS_TARGET)[len(ids)]
    ll = lens.logit_lens(model, ids, target=target, k=5)
    s_ids = tokenizer.encode(SENTENCE)
    _, cache = lens.run_with_cache(model, torch.tensor([s_ids], device=model.device), names=["attn.probs.*"])
    probs = torch.stack([cache[f"attn.probs.{i}"][0].float().cpu() for i in range(model.args.n_layers)])
    return [logit_lens(ll, text, [text(i) for i in ids], target_text=text(target)),
            attention(probs, [text(i) for i in s_ids], title=f"Attention weights for {SENTENCE!r}")]


def save(path, source: str, found: list[Explorer], note: str = "") -> None:
    """Write explorers to a JSON file: ``source`` names the model (an id or path), ``note`` how it ran."""
    from pathlib import Path

    out = {"source": source, "note": note,
           "explorers": [{"kind": e.kind, "summary": e.summary, "data": e.data} for e in found]}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(out, ensure_ascii=True, separators=(",", ":")))


def load_saved(path) -> tuple[str, list[Explorer]]:
    """(source, explorers) from a file ``save`` wrote; the titles say which model they show."""
    from pathlib import Path

    stored = json.loads(Path(path).read_text())
    found = []
    for e in stored["explorers"]:
        data = dict(e["data"])
        data["title"] = f"{stored['source']} ({stored['note']})" + (f": {data['title']}" if data.get("title") else "")
        found.append(Explorer(e["kind"], data, f"{stored['source']}: {e['summary']}"))
    return stored["source"], found


def cli(model_source: str, out: str, device: str | None = None, dtype: str | None = None) -> int:
    """``python -m annotated_llama explore``: compute chapter 10's explorers for a model and save them."""
    import time

    from .loading import load

    start = time.perf_counter()
    model, tokenizer = load(model_source, device=device, dtype=dtype)
    found = chapter10(model, tokenizer)
    note = f"{model.dtype} on {model.device}".replace("torch.", "")
    save(out, model_source, found, note)
    for e in found:
        print(e.summary)
    size = len(open(out, "rb").read())
    print(f"wrote {out} ({size / 1e6:.2f} MB; {note}) in {time.perf_counter() - start:.0f} s")
    return 0


# --- the page's script --------------------------------------------------------------------------------------
# Plain ES5-level JavaScript (no build step, no library). ALX.mount(id) reads the JSON in the div and calls
# the builder for its kind. Everything a test reads is also in data-* attributes, at full precision.

SCRIPT = r"""(function(){
if (window.ALX && window.ALX.version === 1) return;
var SVGNS = "http://www.w3.org/2000/svg";
var A = {version: 1};
function el(tag, attrs, parent, text) {
  var e = document.createElement(tag);
  for (var key in (attrs || {})) e.setAttribute(key, attrs[key]);
  if (text !== undefined) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}
function sv(tag, attrs, parent) {
  var e = document.createElementNS(SVGNS, tag);
  for (var key in (attrs || {})) e.setAttribute(key, attrs[key]);
  if (parent) parent.appendChild(e);
  return e;
}
// viridis, five stops, linearly interpolated: v in [0, 1]
var VIR = [[68,1,84],[59,82,139],[33,145,140],[94,201,98],[253,231,37]];
function viridis(v) {
  v = Math.max(0, Math.min(1, v)) * 4; var i = Math.min(3, Math.floor(v)), f = v - i, a = VIR[i], b = VIR[i+1];
  return "rgb(" + [0,1,2].map(function(c){ return Math.round(a[c] + f * (b[c] - a[c])); }).join(",") + ")";
}
function blues(v) {
  v = Math.max(0, Math.min(1, v));
  return "rgb(" + Math.round(247 - 239 * v) + "," + Math.round(251 - 203 * v) + "," + Math.round(255 - 148 * v) + ")";
}
function vis(t) { return String(t).replace(/ /g, "\u00b7").replace(/\n/g, "\\n"); }
function cut(t, n) { t = vis(t); return t.length > n ? t.slice(0, n - 1) + "\u2026" : t; }
function fmt(v, d) { return Number(v).toFixed(d); }
function slider(parent, label, min, max, step, value) {
  var box = el("label", {style: "margin-right:16px;white-space:nowrap"}, parent, label + " ");
  var input = el("input", {type: "range", min: min, max: max, step: step, value: value,
                           style: "vertical-align:middle;width:180px"}, box);
  var out = el("span", {style: "display:inline-block;min-width:3.5em;font-family:monospace"}, box, String(value));
  return {input: input, out: out};
}

// 1. attention: pick a layer and a head (menus or the sink map); hover a query row.
A.attention = function(root, d) {
  var S = d.tokens.length, L = d.layers.length, H = d.n_heads, st = {l: d.layer, h: d.head, q: S - 1};
  if (d.title) el("div", {style: "font-weight:bold;margin-bottom:4px"}, root, d.title);
  var bar = el("div", {style: "margin-bottom:6px"}, root);
  el("span", {}, bar, "layer ");
  var ls = el("select", {"class": "al-layer"}, bar);
  d.layers.forEach(function(li, i){ el("option", {value: i}, ls, String(li)); });
  el("span", {}, bar, "  head ");
  var hs = el("select", {"class": "al-head"}, bar);
  for (var h = 0; h < H; h++) el("option", {value: h}, hs, String(h));
  var row = el("div", {style: "display:flex;gap:16px;align-items:flex-start;flex-wrap:wrap"}, root);
  // the sink map: every layer x head, coloured by its mean weight on the first token; click to pick
  var cs = Math.max(6, Math.min(14, Math.floor(300 / Math.max(H, L)))), lw = 0;
  var sinkBox = el("div", {}, row);
  el("div", {style: "font-size:11px;max-width:" + (H * cs + 40) + "px"}, sinkBox,
     "weight on the first token (" + vis(d.tokens[0]) + "), mean per head; click a cell");
  var sm = sv("svg", {width: H * cs + 30, height: L * cs + 4, "class": "al-sinkmap"}, sinkBox);
  var sinkCells = [];
  for (var l = 0; l < L; l++) {
    if (l % Math.max(1, Math.ceil(L / 16)) === 0) {
      var t = sv("text", {x: 24, y: l * cs + cs - 1, "font-size": Math.min(10, cs), "text-anchor": "end"}, sm);
      t.textContent = String(d.layers[l]);
    }
    for (var hh = 0; hh < H; hh++) {
      var r = sv("rect", {x: 28 + hh * cs, y: l * cs, width: cs - 1, height: cs - 1,
                          fill: viridis(d.sink[l][hh] / d.scale), "data-layer": l, "data-head": hh}, sm);
      sv("title", {}, r).textContent = "layer " + d.layers[l] + ", head " + hh + ": " + fmt(d.sink[l][hh] / d.scale, 3);
      r.style.cursor = "pointer";
      r.addEventListener("click", (function(l2, h2){ return function(){ st.l = l2; st.h = h2; draw(); }; })(l, hh));
    }
  }
  var pick = sv("rect", {fill: "none", stroke: "#e00", "stroke-width": 2, width: cs + 1, height: cs + 1}, sm);
  // the map of the chosen head: queries down, keys across; the first column framed
  // cells sized to sit beside the sink map in the page's width where they can (at least 8 px each)
  var pad = 90, room = (root.clientWidth || 680) - (H * cs + 30) - pad - 40;
  var c = Math.max(8, Math.min(22, Math.floor(room / S)));
  var mapBox = el("div", {}, row);
  var svg = sv("svg", {width: pad + S * c + 4, height: pad + S * c + 4, "class": "al-map"}, mapBox);
  for (var i = 0; i < S; i++) {
    var ty = sv("text", {x: pad - 4, y: pad + i * c + c * 0.75, "font-size": Math.min(11, c - 1), "text-anchor": "end"}, svg);
    ty.textContent = cut(d.tokens[i], 10);
    var tx = sv("text", {"font-size": Math.min(11, c - 1), transform: "translate(" + (pad + i * c + c * 0.75) + "," + (pad - 4) + ") rotate(-90)"}, svg);
    tx.textContent = cut(d.tokens[i], 10);
  }
  var cells = [];
  for (var qi = 0; qi < S; qi++) {
    cells.push([]);
    var band = sv("g", {"class": "al-query", "data-query": qi}, svg);
    for (var ki = 0; ki <= qi; ki++)
      cells[qi].push(sv("rect", {x: pad + ki * c, y: pad + qi * c, width: c - 1, height: c - 1}, band));
    band.addEventListener("mouseover", (function(q2){ return function(){ st.q = q2; show(); }; })(qi));
  }
  sv("rect", {x: pad - 1, y: pad - 1, width: c + 1, height: S * c + 1, fill: "none", stroke: "#e00",
              "stroke-width": 1.5, "class": "al-sink-column"}, svg);
  var hl = sv("rect", {x: pad - 1, height: c + 1, fill: "none", stroke: "#000", "stroke-width": 1.5}, svg);
  var readout = el("div", {"class": "al-readout", style: "margin-top:6px;line-height:1.9"}, root);
  function weights(q) {  // the chosen head's weights of query q on keys 0..q
    var tri = d.w[st.l][st.h], start = q * (q + 1) / 2;
    return tri.slice(start, start + q + 1);
  }
  function draw() {
    ls.value = st.l; hs.value = st.h;
    root.setAttribute("data-layer", d.layers[st.l]); root.setAttribute("data-head", st.h);
    pick.setAttribute("x", 27 + st.h * cs); pick.setAttribute("y", st.l * cs - 1);
    for (var q = 0; q < S; q++) {
      var w = weights(q);
      for (var k = 0; k <= q; k++) cells[q][k].setAttribute("fill", viridis(w[k] / d.scale));
    }
    show();
  }
  function show() {
    var w = weights(st.q);
    root.setAttribute("data-query", st.q);
    hl.setAttribute("y", pad + st.q * c - 1); hl.setAttribute("width", (st.q + 1) * c + 1);
    readout.textContent = "";
    el("b", {}, readout, "layer " + d.layers[st.l] + ", head " + st.h + ", query " + st.q + " " +
       JSON.stringify(d.tokens[st.q]) + " attends to: ");
    for (var k = 0; k <= st.q; k++) {
      var v = w[k] / d.scale;
      el("span", {"class": "al-key", "data-key": k, "data-w": v, title: fmt(v, 3),
                  style: "padding:1px 3px;margin:1px;border:1px solid #ccc;background:" + blues(v) +
                         ";color:" + (v > 0.6 ? "#fff" : "#000")}, readout, vis(d.tokens[k]) + " " + fmt(v, 2));
    }
  }
  ls.addEventListener("change", function(){ st.l = +ls.value; draw(); });
  hs.addEventListener("change", function(){ st.h = +hs.value; draw(); });
  draw();
};

// 2. the logit lens: rows are layers, columns positions; hover a cell for its top k and the target's rank.
A.logit_lens = function(root, d) {
  var R = d.rows.length, S = d.tokens.length;
  if (d.title) el("div", {style: "font-weight:bold;margin-bottom:4px"}, root, d.title);
  el("div", {style: "font-size:12px;margin-bottom:4px"}, root,
     "Top token per layer and position (colour: its probability). Hover a cell." +
     (d.target !== undefined ? " Target: " + JSON.stringify(d.target) + "." : ""));
  var table = el("table", {"class": "al-grid", style: "border-collapse:collapse;font-size:11px;font-family:monospace"}, root);
  var head = el("tr", {}, table);
  el("th", {}, head, "");
  d.tokens.forEach(function(t){ el("th", {style: "padding:1px 3px;font-weight:normal;color:#555"}, head, cut(t, 9)); });
  for (var r = 0; r < R; r++) {
    var tr = el("tr", {}, table);
    el("th", {style: "text-align:right;padding-right:4px;font-weight:normal;color:#555"}, tr, d.rows[r]);
    for (var s = 0; s < S; s++) {
      var p = d.p[r][s][0] / d.scale;
      var td = el("td", {"class": "al-cell", "data-row": r, "data-pos": s,
                         style: "padding:1px 3px;border:1px solid #fff;cursor:crosshair;background:" + blues(p) +
                                ";color:" + (p > 0.6 ? "#fff" : "#000")}, tr, cut(d.vocab[d.top[r][s][0]], 9));
      td.addEventListener("mouseover", (function(r2, s2){ return function(){ show(r2, s2); }; })(r, s));
    }
  }
  var info = el("div", {"class": "al-info", style: "margin-top:6px;min-height:7em"}, root);
  function show(r, s) {
    info.textContent = "";
    root.setAttribute("data-row", r); root.setAttribute("data-pos", s);
    el("b", {}, info, d.rows[r] + ", position " + s + " (after " + JSON.stringify(d.tokens[s]) + ")");
    var ol = el("ol", {style: "margin:2px 0;padding-left:2em"}, info);
    for (var j = 0; j < d.k; j++) {
      var text = d.vocab[d.top[r][s][j]], p = d.p[r][s][j] / d.scale;
      el("li", {"class": "al-top", "data-token": text, "data-p": p}, ol, JSON.stringify(text) + "  " + fmt(p, 3));
    }
    if (d.target !== undefined)
      el("div", {"class": "al-rank", "data-rank": d.rank[r][s]}, info, "target " + JSON.stringify(d.target) +
         ": rank " + d.rank[r][s] + ", probability " + d.target_p[r][s]);
  }
  show(R - 1, S - 1);
};

// 3. sampling: softmax(z / T) over the stored tokens, the top-p cut, renormalised; the same rule as
// annotated_llama.generate.sample_next: a token survives if the tokens ranked above it hold less than top_p.
A.sampling = function(root, d) {
  var n = d.logits.length;
  el("div", {style: "font-size:12px;margin-bottom:4px"}, root, "Next token after " + JSON.stringify(d.prompt) +
     ": the " + n + " most likely tokens (at T = 1 they hold " + fmt(d.full_mass, 3) +
     " of the full distribution; the rest of the vocabulary is left out here).");
  var bar = el("div", {style: "margin-bottom:6px"}, root);
  var T = slider(bar, "temperature", 0.05, 2, 0.05, d.temperature);
  var P = slider(bar, "top-p", 0.01, 1, 0.01, d.top_p);
  T.input.className = "al-temperature"; P.input.className = "al-top-p";
  var status = el("div", {"class": "al-status", style: "margin-bottom:4px"}, root);
  var list = el("div", {"class": "al-bars"}, root);
  var rows = [];
  for (var i = 0; i < n; i++) {
    var line = el("div", {"class": "al-token", style: "display:flex;align-items:center;height:15px;font-size:11px"}, list);
    el("span", {style: "width:9em;font-family:monospace;overflow:hidden;white-space:nowrap"}, line, JSON.stringify(d.tokens[i]));
    var track = el("span", {style: "position:relative;width:300px;height:11px;background:#f3f3f3;margin:0 6px"}, line);
    var before = el("span", {style: "position:absolute;left:0;top:0;height:5px;background:#bbb"}, track);
    var after = el("span", {style: "position:absolute;left:0;top:5px;height:6px;background:#2b6cb0"}, track);
    var num = el("span", {style: "font-family:monospace;width:11em"}, line);
    rows.push({line: line, before: before, after: after, num: num});
  }
  function update() {
    var t = +T.input.value, top_p = +P.input.value, z = d.logits, mx = -Infinity, sum = 0, p = [], i;
    T.out.textContent = fmt(t, 2); P.out.textContent = fmt(top_p, 2);
    for (i = 0; i < n; i++) mx = Math.max(mx, z[i] / t);
    for (i = 0; i < n; i++) { p.push(Math.exp(z[i] / t - mx)); sum += p[i]; }
    for (i = 0; i < n; i++) p[i] /= sum;
    var order = p.map(function(_, j){ return j; }).sort(function(a, b){ return p[b] - p[a] || a - b; });
    var kept = [], mass = 0, before = 0;
    for (i = 0; i < n; i++) { var j = order[i]; kept[j] = before < top_p; before += p[j]; if (kept[j]) mass += p[j]; }
    var count = 0;
    for (i = 0; i < n; i++) {
      var q = kept[i] ? p[i] / mass : 0, row = rows[i];
      if (kept[i]) count++;
      row.line.setAttribute("data-p", p[i]); row.line.setAttribute("data-renorm", q);
      row.line.setAttribute("data-kept", kept[i] ? "1" : "0"); row.line.style.opacity = kept[i] ? "1" : "0.35";
      row.before.style.width = (300 * p[i]) + "px"; row.after.style.width = (300 * q) + "px";
      row.num.textContent = fmt(p[i], 3) + (kept[i] ? " \u2192 " + fmt(q, 3) : "  cut");
    }
    status.textContent = count + " of " + n + " tokens survive, holding " + fmt(mass, 3) +
      " before renormalising (grey: softmax(z/T); blue: renormalised after the cut)";
    root.setAttribute("data-kept", count);
  }
  T.input.addEventListener("input", update); P.input.addEventListener("input", update);
  update();
};

// 4. RoPE: the query at m = n + distance, the key at n; each pair (2j, 2j+1) turned by position * theta_j.
A.rope = function(root, d) {
  var hd = d.q.length;
  function rotate(v, pos) {
    var out = new Array(hd);
    for (var j = 0; j < hd / 2; j++) {
      var a = pos * d.theta[j], c = Math.cos(a), s = Math.sin(a);
      out[2*j] = v[2*j] * c - v[2*j+1] * s; out[2*j+1] = v[2*j] * s + v[2*j+1] * c;
    }
    return out;
  }
  function score(m, n) { var a = rotate(d.q, m), b = rotate(d.k, n), t = 0; for (var i = 0; i < hd; i++) t += a[i] * b[i]; return t; }
  el("div", {style: "font-size:12px;margin-bottom:4px"}, root, "Query " + JSON.stringify(d.q_text) + " at position m, key " +
     JSON.stringify(d.k_text) + " at position n. Move both with the first slider: the score stays; change the distance: it moves.");
  var bar = el("div", {style: "margin-bottom:6px"}, root);
  var N = slider(bar, "key position n", 0, d.max_pos - d.max_distance, 1, 0);
  var D = slider(bar, "distance m \u2212 n", 0, d.max_distance, 1, Math.min(3, d.max_distance));
  N.input.className = "al-position"; D.input.className = "al-distance";
  var readout = el("div", {"class": "al-score", style: "font-family:monospace;margin-bottom:4px"}, root);
  var row = el("div", {style: "display:flex;gap:10px;flex-wrap:wrap"}, root);
  var circles = d.pairs.map(function(j) {
    var box = el("div", {style: "text-align:center;font-size:11px"}, row);
    var svg = sv("svg", {width: 150, height: 150, "class": "al-pair", "data-pair": j}, box);
    sv("circle", {cx: 75, cy: 75, r: 60, fill: "none", stroke: "#ccc"}, svg);
    var qa = sv("line", {x1: 75, y1: 75, stroke: "#d62728", "stroke-width": 2.5, "class": "al-q"}, svg);
    var ka = sv("line", {x1: 75, y1: 75, stroke: "#1f77b4", "stroke-width": 2.5, "class": "al-k"}, svg);
    el("div", {}, box, "pair " + j + ": \u03b8 = " + Number(d.theta[j]).toPrecision(3) + " rad/position");
    return {j: j, qa: qa, ka: ka};
  });
  el("div", {style: "font-size:11px;align-self:center"}, row, "red: query pair, blue: key pair (each scaled to the circle)");
  var W = 320, Hh = 150, plot = sv("svg", {width: W, height: Hh, "class": "al-curve"}, row);
  var curve = [], lo = Infinity, hi = -Infinity;
  for (var t = 0; t <= d.max_distance; t++) { var v = score(t, 0); curve.push(v); lo = Math.min(lo, v); hi = Math.max(hi, v); }
  if (hi === lo) hi = lo + 1;
  function px(t) { return 30 + (W - 40) * t / Math.max(1, d.max_distance); }
  function py(v) { return Hh - 20 - (Hh - 30) * (v - lo) / (hi - lo); }
  sv("polyline", {points: curve.map(function(v, t){ return px(t) + "," + py(v); }).join(" "), fill: "none", stroke: "#555"}, plot);
  sv("text", {x: 30, y: Hh - 4, "font-size": 10}, plot).textContent = "score against the distance m \u2212 n (0-" + d.max_distance + ")";
  sv("text", {x: 26, y: py(hi) + 4, "font-size": 10, "text-anchor": "end"}, plot).textContent = hi.toFixed(1);
  sv("text", {x: 26, y: py(lo) + 4, "font-size": 10, "text-anchor": "end"}, plot).textContent = lo.toFixed(1);
  var dot = sv("circle", {r: 4, fill: "#d62728"}, plot);
  function update() {
    var n = +N.input.value, dist = +D.input.value, m = n + dist, sc = score(m, n);
    N.out.textContent = n; D.out.textContent = dist;
    var qm = rotate(d.q, m), kn = rotate(d.k, n);
    circles.forEach(function(ci) {
      var j = ci.j, rq = Math.hypot(d.q[2*j], d.q[2*j+1]) || 1, rk = Math.hypot(d.k[2*j], d.k[2*j+1]) || 1;
      ci.qa.setAttribute("x2", 75 + 60 * qm[2*j] / rq); ci.qa.setAttribute("y2", 75 - 60 * qm[2*j+1] / rq);
      ci.ka.setAttribute("x2", 75 + 60 * kn[2*j] / rk); ci.ka.setAttribute("y2", 75 - 60 * kn[2*j+1] / rk);
    });
    dot.setAttribute("cx", px(dist)); dot.setAttribute("cy", py(curve[dist]));
    readout.setAttribute("data-score", sc); readout.setAttribute("data-m", m); readout.setAttribute("data-n", n);
    readout.textContent = "m = " + m + ", n = " + n + ", m \u2212 n = " + dist + ":  q_m \u00b7 k_n = " + fmt(sc, 3);
  }
  N.input.addEventListener("input", update); D.input.addEventListener("input", update);
  update();
};

// 5. embedding map: points on the plane; hover one, or search a word, to see its nearest neighbours.
A.embedding_map = function(root, d) {
  var n = d.labels.length, W = 560, Hh = 380, m = 12;
  var bar = el("div", {style: "margin-bottom:6px"}, root);
  el("span", {}, bar, "find a token: ");
  var box = el("input", {type: "search", "class": "al-search", placeholder: "e.g. " + d.labels[0].trim(), style: "width:12em"}, bar);
  var legend = el("span", {style: "margin-left:12px;font-size:11px"}, bar);
  d.groups.forEach(function(g, i){ el("span", {style: "color:" + d.colours[i] + ";margin-right:8px"}, legend, "\u25cf " + g); });
  el("span", {style: "color:#999"}, legend, "\u25cf other tokens");
  var xs = d.xy.map(function(p){ return p[0]; }), ys = d.xy.map(function(p){ return p[1]; });
  var x0 = Math.min.apply(null, xs), x1 = Math.max.apply(null, xs), y0 = Math.min.apply(null, ys), y1 = Math.max.apply(null, ys);
  function X(v) { return m + (W - 2 * m) * (v - x0) / ((x1 - x0) || 1); }
  function Y(v) { return Hh - m - (Hh - 2 * m) * (v - y0) / ((y1 - y0) || 1); }
  var row = el("div", {style: "display:flex;gap:12px;flex-wrap:wrap"}, root);
  var svg = sv("svg", {width: W, height: Hh, "class": "al-plane", style: "border:1px solid #eee"}, row);
  var info = el("div", {"class": "al-info", style: "min-width:14em;font-size:12px"}, row, "Hover a point or search a token.");
  var dots = [];
  var order = d.group.map(function(g, i){ return i; }).sort(function(a, b){ return d.group[a] - d.group[b]; });
  order.forEach(function(i) {  // grouped points drawn last, on top
    var g = d.group[i], c = sv("circle", {cx: X(d.xy[i][0]), cy: Y(d.xy[i][1]), r: g < 0 ? 3 : 4.5,
      fill: g < 0 ? "#bbb" : d.colours[g], "class": "al-point", "data-index": i}, svg);
    sv("title", {}, c).textContent = d.labels[i];
    c.addEventListener("mouseover", function(){ show(i); });
    dots[i] = c;
  });
  var ring = sv("circle", {r: 8, fill: "none", stroke: "#e00", "stroke-width": 2, visibility: "hidden"}, svg);
  var tag = sv("text", {"font-size": 12, "font-weight": "bold"}, svg);
  function show(i) {
    root.setAttribute("data-selected", i);
    ring.setAttribute("cx", X(d.xy[i][0])); ring.setAttribute("cy", Y(d.xy[i][1])); ring.setAttribute("visibility", "visible");
    tag.setAttribute("x", X(d.xy[i][0]) + 9); tag.setAttribute("y", Y(d.xy[i][1]) - 6); tag.textContent = vis(d.labels[i]);
    info.textContent = "";
    el("b", {"class": "al-label", "data-label": d.labels[i]}, info, JSON.stringify(d.labels[i]));
    el("div", {}, info, "nearest in the full embedding (cosine):");
    var ol = el("ol", {style: "margin:2px 0;padding-left:2em"}, info);
    d.nn[i].forEach(function(j, r) {
      el("li", {"class": "al-neighbour", "data-index": j}, ol, JSON.stringify(d.labels[j]) + "  " + fmt(d.nn_cos[i][r] / d.scale, 2));
    });
  }
  box.addEventListener("input", function() {
    var s = box.value.trim(), hit = -1, i;
    if (!s) return;
    for (i = 0; i < n && hit < 0; i++) if (d.labels[i].trim() === s) hit = i;
    for (i = 0; i < n && hit < 0; i++) if (d.labels[i].trim().toLowerCase() === s.toLowerCase()) hit = i;
    for (i = 0; i < n && hit < 0; i++) if (d.labels[i].trim().toLowerCase().indexOf(s.toLowerCase()) === 0) hit = i;
    if (hit >= 0) show(hit); else { root.setAttribute("data-selected", -1); info.textContent = "no token " + JSON.stringify(s) + " on this map"; }
  });
};

A.mount = function(id, tries) {
  var root = document.getElementById(id);
  if (!root) { if ((tries || 0) < 50) setTimeout(function(){ A.mount(id, (tries || 0) + 1); }, 100); return; }
  if (root.getAttribute("data-mounted")) return;
  root.setAttribute("data-mounted", "1");
  var data = JSON.parse(root.querySelector("script.al-data").textContent);
  try { A[root.getAttribute("data-kind")](root, data); root.setAttribute("data-ready", "1"); }
  catch (e) { root.setAttribute("data-error", String(e)); el("pre", {style: "color:#b00"}, root, "explorer failed: " + e); }
};
window.ALX = A;
})();"""

__all__ = ["Explorer", "SCRIPT", "attention", "chapter10", "cli", "embedding_map", "load_saved", "logit_lens", "rope",
           "rope_score", "sampling", "save", "stored_logits", "word_tokens"]
