"""Mutation check: plausible bugs put into a copy of the package, each of which the unit tests must catch.

Each mutant is (name, file under src/annotated_llama/, exact original snippet, replacement). For each one the
script copies ``src/`` to a temporary directory, applies the replacement there (the checkout is never
touched), and runs pytest on the unit tests (``tests/``, no notebooks, ``-m "not slow"``) in a subprocess whose
PYTHONPATH puts the patched copy first. A mutant is *killed* when a test fails, *survived* when the tests pass.

Speed: the tests most likely to catch a mutant (``first``) run first, alone, with ``-x``; only if they all pass
does the rest of the unit suite run, so "survived" always means "the whole non-slow unit suite passed". At the
end, every test that killed a mutant is run once more on an unpatched copy: a kill by a test that fails anyway
does not count.

Exit status 1 if any mutant survives, if its original snippet is not found exactly once in its file (the code
changed: update the mutant below), if a kill does not hold, or on a timeout. ``--list`` shows the mutants;
``--only NAME...`` runs some of them; ``--snippets`` only checks that every snippet is still there.

    python scripts/mutants.py [--workers 2] [--only cache-decode-no-write ...] [--list] [--snippets]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "annotated_llama"
TIMEOUT_S = 420  # per mutant; the whole non-slow unit suite takes about 3 minutes on 2 busy cores


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str  # relative to src/annotated_llama/
    original: str
    replacement: str
    first: tuple[str, ...]  # test files to try first (a speed-up only)
    why: str = ""


M = Mutant
MUTANTS = [
    # --- model.py ------------------------------------------------------------------------------------------
    M("model-rope-pairing", "model.py",
      "x.float().reshape(*x.shape[:-1], -1, 2)",
      "x.float().reshape(*x.shape[:-1], 2, -1).transpose(-1, -2).contiguous()",
      ("tests/test_model.py",), "RoPE pairs (j, j + d/2) (the rotate-half pairing) on Meta's interleaved layout"),
    M("model-rope-theta-ignored", "model.py",
      "precompute_freqs_cis(a.head_dim, a.max_seq_len, a.rope_theta, a)",
      "precompute_freqs_cis(a.head_dim, a.max_seq_len, 10000.0, a)",
      ("tests/test_model.py",), "the config's RoPE base replaced by the default 10,000"),
    M("model-gqa-chunk-repeat", "model.py",
      "k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)",
      "k, v = k.repeat(1, n_rep, 1, 1), v.repeat(1, n_rep, 1, 1)",
      ("tests/test_cache.py", "tests/test_model.py"),
      "GQA head mapping in a chunk after cached positions: query head h reads KV head h % n_kv, not h // n_rep"),
    M("model-probs-gqa-mapping", "model.py",
      "k = k.repeat_interleave(n_rep, dim=1)  # query head h reads KV head h // n_rep",
      "k = k.repeat(1, n_rep, 1, 1)",
      ("tests/test_model.py", "tests/test_lens.py"), "the same GQA mapping bug in attention_probabilities"),
    M("model-chunk-mask-upper-left", "model.py",
      "attn_mask=causal_lower_right(seq, k.shape[2])",
      "attn_mask=torch.nn.attention.bias.causal_upper_left(seq, k.shape[2])",
      ("tests/test_cache.py", "tests/test_model.py"),
      "causal mask offset: a chunk after cached positions masked as if it started at position 0"),
    M("model-causal-mask-offset", "model.py",
      "query_pos = torch.arange(seq, device=device)[:, None] + start_pos",
      "query_pos = torch.arange(seq, device=device)[:, None]",
      ("tests/test_lens.py", "tests/test_model.py"), "causal_mask forgets start_pos (attention weights)"),
    M("model-prefill-not-causal", "model.py",
      "out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)",
      "out = F.scaled_dot_product_attention(q, k, v, is_causal=False, enable_gqa=gqa)",
      ("tests/test_model.py",), "the prompt attends to future tokens"),
    M("model-rmsnorm-in-bf16", "model.py",
      "        xf = x.float()\n        normed",
      "        xf = x\n        normed",
      ("tests/test_model.py", "tests/test_weights.py"), "RMSNorm's mean of squares and rsqrt in the input dtype"),
    M("model-rmsnorm-eps-ignored", "model.py",
      "self.attention_norm = RMSNorm(args.dim, eps=args.norm_eps)",
      "self.attention_norm = RMSNorm(args.dim)",
      ("tests/test_model.py",), "the config's norm_eps (1e-6 in the test models) replaced by the default 1e-5"),
    M("model-swiglu-gate-up-swap", "model.py",
      "F.silu(self.w1(x)) * self.w3(x)",
      "F.silu(self.w3(x)) * self.w1(x)",
      ("tests/test_model.py",), "SwiGLU: SiLU on the up projection instead of the gate"),
    # --- cache.py ------------------------------------------------------------------------------------------
    M("cache-decode-no-write", "cache.py",
      "self.k[:, :, start_pos:end] = k",
      "if k.shape[2] > 1: self.k[:, :, start_pos:end] = k",
      ("tests/test_cache.py", "tests/test_model.py"), "a one-token decode step does not write its key"),
    M("cache-zero-on-grow", "cache.py",
      "self.v = torch.nn.functional.pad(self.v, (0, 0, 0, pad))",
      "self.v = torch.zeros_like(torch.nn.functional.pad(self.v, (0, 0, 0, pad)))",
      ("tests/test_cache.py", "tests/test_model.py"), "growing the cache loses the values already in it"),
    M("cache-wrong-slice", "cache.py",
      "return self.k[:, :, :end], self.v[:, :, :end]",
      "return self.k, self.v",
      ("tests/test_cache.py", "tests/test_model.py"), "attention reads the whole capacity, unwritten slots too"),
    # --- weights.py ----------------------------------------------------------------------------------------
    M("weights-qk-permutation-direction", "weights.py",
      "tensor = unpermute_hf(tensor, heads[name])",
      "tensor = permute_meta_to_hf(tensor, heads[name])",
      ("tests/test_model.py",), "HF q/k rows permuted the wrong way (Meta -> HF instead of HF -> Meta)"),
    M("weights-shard-concat-dim", "weights.py",
      '"wo": 1',
      '"wo": 0',
      ("tests/test_model.py",), "Meta shards of wo (row-parallel) concatenated along the wrong dimension"),
    M("weights-shard-order", "weights.py",
      'shards = sorted(path.glob("consolidated.*.pth"))',
      'shards = sorted(path.glob("consolidated.*.pth"), reverse=True)',
      ("tests/test_model.py",), "Meta shards concatenated in the wrong order"),
    # --- tokenizer.py --------------------------------------------------------------------------------------
    M("tokenizer-bos-always", "tokenizer.py",
      "bos = self.add_bos",
      "bos = True",
      ("tests/test_tokenizer.py",), "BOS added by default even where the tokenizer's convention is not to"),
    M("tokenizer-no-dummy-prefix", "tokenizer.py",
      "normalizer.add_dummy_prefix = True",
      "normalizer.add_dummy_prefix = False",
      ("tests/test_tokenizer.py",), "SentencePiece without the dummy prefix: 'Hello' no longer '▁Hello'"),
    M("tokenizer-digits-not-split", "tokenizer.py",
      "trainer.split_digits = True",
      "trainer.split_digits = False",
      ("tests/test_tokenizer.py",), "Llama 2's digits merged into multi-digit pieces"),
    # --- generate.py: the sampler --------------------------------------------------------------------------
    M("sampler-ignores-temperature", "generate.py",
      "probs = torch.softmax(logits.float() / temperature, dim=-1)",
      "probs = torch.softmax(logits.float(), dim=-1)",
      ("tests/test_sampling.py",), "sample_next draws at temperature 1 whatever it is given"),
    M("sampler-ignores-top-k", "generate.py",
      "sorted_probs[:, top_k:] = 0.0",
      "pass",
      ("tests/test_sampling.py",), "sample_next ignores top_k"),
    M("sampler-top-p-off-by-one", "generate.py",
      "mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs",
      "mass_before = sorted_probs.cumsum(dim=-1)",
      ("tests/test_sampling.py",), "top-p drops the token that crosses the threshold"),
    # --- fast.py: the GPU decode path ----------------------------------------------------------------------
    M("fast-sampler-ignores-temperature", "fast.py",
      "probs = torch.softmax(logits.float() / temperature, dim=-1)",
      "probs = torch.softmax(logits.float(), dim=-1)",
      ("tests/test_sampling.py", "tests/test_fast.py"), "sample_on_device draws at temperature 1"),
    M("fast-sampler-top-p-off-by-one", "fast.py",
      "mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs",
      "mass_before = sorted_probs.cumsum(dim=-1)",
      ("tests/test_sampling.py", "tests/test_fast.py"), "sample_on_device's top-p drops the crossing token"),
    M("fast-rope-direction", "fast.py",
      "torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1)",
      "torch.stack((x0 * c + x1 * s, x1 * c - x0 * s), dim=-1)",
      ("tests/test_fast.py",), "the real-arithmetic RoPE turns the other way"),
    M("fast-decode-rope-position", "fast.py",
      "cos, sin = self.rope_cos[pos], self.rope_sin[pos]",
      "cos, sin = self.rope_cos[pos - 1], self.rope_sin[pos - 1]",
      ("tests/test_fast.py",), "the decode step rotates by the previous position's angle"),
    M("fast-decode-mask-excludes-self", "fast.py",
      "mask = (self.key_pos <= pos)[None, None, None]",
      "mask = (self.key_pos < pos)[None, None, None]",
      ("tests/test_fast.py",), "the decode step cannot see its own key"),
    M("fast-decode-gqa-fold", "fast.py",
      "q = q.reshape(batch, self.n_kv_heads, self.n_rep, self.head_dim)",
      "q = q.reshape(batch, self.n_rep, self.n_kv_heads, self.head_dim).transpose(1, 2)",
      ("tests/test_fast.py",), "query heads folded into the wrong KV groups"),
    # --- lens.py -------------------------------------------------------------------------------------------
    M("lens-reads-whole-cache", "lens.py",
      "k = attn.cache.k[:, :, : start_pos + q.shape[2]]",
      "k = attn.cache.k",
      ("tests/test_lens.py",), "decode-step attention weights over every cache slot, written or not"),
    M("lens-skips-final-norm", "lens.py",
      "return model.output(model.norm(resid.to(model.dtype))).float()",
      "return model.output(resid.to(model.dtype)).float()",
      ("tests/test_lens.py",), "the logit lens decodes the residual stream without the final RMSNorm"),
    # --- config.py -----------------------------------------------------------------------------------------
    M("config-ffn-rounds-down", "config.py",
      "return multiple_of * math.ceil(hidden / multiple_of)",
      "return multiple_of * (hidden // multiple_of)",
      ("tests/test_config.py",), "Meta's FFN size rounded down instead of up"),
    # --- quant.py ------------------------------------------------------------------------------------------
    M("quant-q4_1-nibbles-swapped", "quant.py",
      "q[j] = byte & 0x0F  # low nibble: elements 0..15\n        q[j + 16] = byte >> 4",
      "q[j] = byte >> 4  # low nibble: elements 0..15\n        q[j + 16] = byte & 0x0F",
      ("tests/test_quant.py",), "a Q4_1 block decoded with its low and high nibbles exchanged"),
    M("quant-from-q4_1-interleaved", "quant.py",
      "q = torch.cat((nibbles & 0x0F, nibbles >> 4), dim=1)",
      "q = torch.stack((nibbles & 0x0F, nibbles >> 4), dim=2)",
      ("tests/test_quant.py",), "Q4_1 nibbles read as adjacent pairs (0, 1), not (j, j + 16), into Int4Linear"),
    M("quant-int4-kernel-zero", "quant.py",
      "zero8 = self.zero + 8 * self.scale",
      "zero8 = self.zero",
      ("tests/test_quant.py",), "the int4 kernel's (q - 8)·scale + zero' convention given our zero unchanged"),
    M("quant-int8-row-scale-lost", "quant.py",
      "y = torch.ops.quantized.linear_dynamic(x2 / r, self._pack, True) * r",
      "y = torch.ops.quantized.linear_dynamic(x2 / r, self._pack, True)",
      ("tests/test_quant.py",), "int8: each token divided by its max |x| for the kernel, never multiplied back"),
    M("quant-int8-remainder-dropped", "quant.py",
      "y = torch.add(yy[:tokens], yy[tokens:2 * tokens], alpha=1 / FRAC).div_(k)",
      "y = yy[:tokens].div_(k)",
      ("tests/test_quant.py",), "two-level int8 activations: the remainder row computed, then ignored"),
    M("quant-concat-scales-misaligned", "quant.py",
      "return cls(torch.cat([p.q for p in parts]), torch.cat([p.scale for p in parts]), p0.group_size,",
      "return cls(torch.cat([p.q for p in parts]), torch.cat([p.scale for p in parts]).roll(1), p0.group_size,",
      ("tests/test_quant.py",), "Int8Linear.concat: every row's scale shifted to the next row"),
]


@dataclass
class Result:
    mutant: Mutant
    status: str  # killed, survived, snippet-not-found, snippet-ambiguous, timeout
    killer: str = ""
    seconds: float = 0.0
    stage: str = ""
    detail: str = ""


def patched_copy(mutant: Mutant | None, workdir: Path) -> tuple[Path, str]:
    """Copy src/ into workdir and apply the mutant there; returns (the copy's src dir, '' or a problem)."""
    src = workdir / "src"
    shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    if mutant is None:
        return src, ""
    path = src / "annotated_llama" / mutant.file
    text = path.read_text()
    count = text.count(mutant.original)
    if count != 1:
        return src, "snippet-not-found" if count == 0 else f"snippet-ambiguous ({count} matches)"
    path.write_text(text.replace(mutant.original, mutant.replacement))
    return src, ""


def pytest_env(src: Path, threads: int) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(src) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["OMP_NUM_THREADS"] = str(threads)
    env["TOKENIZERS_PARALLELISM"] = "false"
    return env


def run_pytest(args: list[str], src: Path, basetemp: Path, threads: int, timeout: float, stop_first=True):
    cmd = [sys.executable, "-m", "pytest", "-q", *(["-x"] if stop_first else []), "-rfE", "-p", "no:cacheprovider", "-p", "no:randomly",
           "-m", "not slow", f"--basetemp={basetemp}", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=pytest_env(src, threads), capture_output=True, text=True,
                          timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


def failing_tests(output: str) -> list[str]:
    return re.findall(r"^(?:FAILED|ERROR) (\S+)", output, flags=re.M)


def unit_test_files() -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py"))


def run_mutant(mutant: Mutant, threads: int) -> Result:
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"mutant-{mutant.name}-") as tmp:
        src, problem = patched_copy(mutant, Path(tmp))
        if problem:
            return Result(mutant, problem.split(" ")[0], detail=problem)
        first = [f for f in mutant.first if (ROOT / f).is_file()]
        rest = [f for f in unit_test_files() if f not in first]
        for stage, files in (("targeted", first), ("full", rest)):
            if not files:
                continue
            left = TIMEOUT_S - (time.monotonic() - start)
            try:
                rc, out = run_pytest(files, src, Path(tmp) / f"pytest-{stage}", threads, left)
            except subprocess.TimeoutExpired:
                return Result(mutant, "timeout", seconds=time.monotonic() - start, stage=stage)
            if rc == 5:  # no tests collected (all deselected): nothing ran, go on
                continue
            if rc != 0:
                failed = failing_tests(out)
                killer = failed[0] if failed else f"pytest exit {rc} (collection error?)"
                return Result(mutant, "killed", killer, time.monotonic() - start, stage,
                              detail="" if failed else out[-2000:])
    return Result(mutant, "survived", seconds=time.monotonic() - start, stage="full")


def confirm_kills(results: list[Result], threads: int) -> set[str]:
    """Run every killing test on an unpatched copy; return those that fail there too."""
    killers = sorted({r.killer for r in results if r.status == "killed" and "::" in r.killer})
    if not killers:
        return set()
    with tempfile.TemporaryDirectory(prefix="mutant-none-") as tmp:
        src, _ = patched_copy(None, Path(tmp))
        rc, out = run_pytest(killers, src, Path(tmp) / "pytest", threads, TIMEOUT_S, stop_first=False)
        return set(failing_tests(out)) if rc != 0 else set()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="mutants run in parallel (default 2)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutants")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--snippets", action="store_true",
                        help="only check that every original snippet is found exactly once (seconds)")
    a = parser.parse_args()

    mutants = MUTANTS
    if a.only:
        unknown = set(a.only) - {m.name for m in MUTANTS}
        if unknown:
            parser.error(f"unknown mutants: {sorted(unknown)}")
        mutants = [m for m in MUTANTS if m.name in a.only]
    if a.list:
        for m in mutants:
            print(f"{m.name:36} {m.file:13} {m.why}")
        return 0
    if a.snippets:
        problems = 0
        for m in mutants:
            count = (PACKAGE / m.file).read_text().count(m.original)
            if count != 1:
                problems += 1
                print(f"{m.name:36} {m.file:13} snippet found {count} times (need exactly 1): {m.original!r}")
        print(f"{len(mutants) - problems}/{len(mutants)} snippets found exactly once")
        return 1 if problems else 0

    threads = max(1, (os.cpu_count() or 2) // a.workers)
    # The patched copy must be what the tests import (an installed package must not shadow it).
    with tempfile.TemporaryDirectory(prefix="mutant-check-") as tmp:
        src, _ = patched_copy(None, Path(tmp))
        where = subprocess.run([sys.executable, "-c", "import annotated_llama; print(annotated_llama.__file__)"],
                               cwd=ROOT, env=pytest_env(src, 1), capture_output=True, text=True).stdout.strip()
        if not where.startswith(str(src)):
            print(f"error: with PYTHONPATH={src}, annotated_llama is imported from {where!r}", file=sys.stderr)
            return 1

    start = time.monotonic()
    print(f"{len(mutants)} mutants, {a.workers} at a time, {threads} thread(s) each; unit tests only "
          f"(-m 'not slow', no notebooks)", flush=True)

    def one(m: Mutant) -> Result:
        r = run_mutant(m, threads)
        print(f"  {r.status:18} {m.name:36} {r.seconds:6.1f} s  {r.killer or r.detail}", flush=True)
        return r

    with ThreadPoolExecutor(max_workers=a.workers) as pool:
        results = list(pool.map(one, mutants))

    unconfirmed = confirm_kills(results, threads)
    wall = time.monotonic() - start
    print(f"\n{'mutant':36} {'file':13} {'result':18} killed by")
    bad = 0
    for r in results:
        status = r.status
        if status == "killed" and r.killer in unconfirmed:
            status = "kill-not-confirmed"
        ok = status == "killed"
        bad += not ok
        note = r.killer if ok else {
            "survived": "SURVIVED the whole non-slow unit suite: add a test that catches it",
            "snippet-not-found": "SNIPPET NOT FOUND: the code changed; update this mutant in scripts/mutants.py",
            "snippet-ambiguous": f"SNIPPET AMBIGUOUS ({r.detail}): make the original snippet unique",
            "timeout": f"TIMEOUT after {TIMEOUT_S} s in the {r.stage} stage",
            "kill-not-confirmed": f"{r.killer} fails WITHOUT the mutant too: fix that test first",
        }.get(status, r.detail)
        print(f"{r.mutant.name:36} {r.mutant.file:13} {status:18} {note}")
        if status == "killed" and r.detail:
            print("    " + r.detail.replace("\n", "\n    "))
    killed = sum(r.status == "killed" and r.killer not in unconfirmed for r in results)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds say what the wall time would be on an idle machine (about cpu / workers), whatever the load.
    print(f"\n{killed}/{len(results)} mutants killed by the unit tests; wall time {wall:.0f} s, CPU time of the "
          f"test runs {usage.ru_utime + usage.ru_stime:.0f} s, load average (1 min) at the end "
          f"{os.getloadavg()[0]:.1f}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
