"""Does each chapter hold the weights once? Peak memory of every chapter run on a ~1.5 GB checkpoint.

A reader on a Colab T4 runs a chapter on a model that fills most of the GPU; a chapter that loads the model a
second time, or keeps logits for every position of a long prompt, does not fit. On a CPU the same question is
asked of the kernel's resident memory: each chapter is executed with ``MODEL`` set to a random-weight
checkpoint of about 1.5 GB (float32), and its peak resident memory above what the kernel held just before the
model was loaded is divided by the bytes of the model's weights. Target: at most 1.25 for every chapter.

    python benchmarks/memory_check.py [--chapters notebooks/05_rope.ipynb ...] [--keep DIR]

Writes its section of benchmarks/RESULTS.md. A run over some chapters keeps the rows of the others from the
section as it was (each row says when it was measured), so chapters can be re-measured one at a time.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "benchmarks"))

TARGET = 1.25
# Llama-2-like (SentencePiece vocabulary, untied output) at 1/2 of Llama-3.2-1B's width per layer, 4 layers:
# 374 M parameters, 1.50 GB in float32.
CONFIG = dict(hidden_size=2048, num_hidden_layers=4, num_attention_heads=32, num_key_value_heads=8,
              intermediate_size=8192, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5,
              rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=False)


def write_big_checkpoint(directory: Path) -> Path:
    from checkpoints import llama2_sentencepiece_bytes, random_hf_model

    directory.mkdir(parents=True, exist_ok=True)
    if not (directory / "model.safetensors").is_file():
        random_hf_model(CONFIG).save_pretrained(directory)
        (directory / "tokenizer.model").write_bytes(llama2_sentencepiece_bytes())
    return directory


# Usable memory of Colab's GPUs, GB (../shared/references.md: T4 about 15, L4 about 22.5, A100 40 or 80).
GPUS = {"T4": 15.0, "L4": 22.5, "A100 40 GB": 40.0, "A100 80 GB": 80.0}
# The checkpoints the chapters' MODEL cells suggest, with the 16-bit dtype each would run in.
SUGGESTED = ["tinyllama-1.1b", "llama3.2-1b", "llama3.2-3b", "llama2-7b", "codellama-7b", "llama3.1-8b"]


def gpu_table(ratio: float) -> list[str]:
    """Which Colab GPU each suggested model needs if a chapter peaks at ``ratio`` × its 16-bit weights."""
    from annotated_llama import ModelArgs, count_parameters

    lines = [f"By that arithmetic (16-bit weights × {ratio:.2f}, the largest ratio; the CUDA context",
             "and a long prompt's KV cache come on top):", "",
             "| model | parameters | 16-bit weights GB | × largest ratio GB | smallest Colab GPU it fits |",
             "|---|---:|---:|---:|---|"]
    for name in SUGGESTED:
        n = count_parameters(ModelArgs.preset(name))
        need = 2 * n * ratio / 1e9
        fits = next((gpu for gpu, gb in GPUS.items() if need <= gb), "none of them")
        lines.append(f"| {name} | {n:,} | {2 * n / 1e9:.2f} | {need:.2f} | {fits} |")
    return lines


def earlier_rows() -> dict[str, str]:
    """The table rows of the current memory_check section, by chapter stem."""
    from results_md import RESULTS

    text = RESULTS.read_text() if RESULTS.is_file() else ""
    section = re.search(r"<!-- BEGIN memory_check -->(.*?)<!-- END memory_check -->", text, re.S)
    lines = re.findall(r"^\| \d\d_\w+ \|.*$", section.group(1) if section else "", re.M)
    return {line.split("|")[1].strip(): line for line in lines}


def main() -> None:
    from nbclient.exceptions import CellExecutionError
    from results_md import machine_line, write_section
    from run_chapter import execute_chapter

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chapters", nargs="*", type=Path,
                        default=sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")))
    parser.add_argument("--keep", type=Path, help="write (or reuse) the checkpoint here instead of a temp dir")
    a = parser.parse_args()
    header = machine_line()
    when = re.search(r"Measured (\S+ \S+) UTC", header).group(1)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = write_big_checkpoint(a.keep or Path(tmp) / "ckpt")
        rows, worst = [], 0.0
        for chapter in a.chapters:
            start = time.perf_counter()
            try:
                _, fig = execute_chapter(chapter, str(ckpt), "float32", memory=True, timeout=1800)
            except CellExecutionError as e:
                rows.append(f"| {chapter.stem} | failed: {str(e).splitlines()[-1][:80]} | | | | | {when} |")
                print(rows[-1], flush=True)
                continue
            ratio = (fig["peak"] - fig["before_load"]) / fig["weights"]
            worst = max(worst, ratio)
            rows.append(f"| {chapter.stem} | {fig['weights'] / 1e9:.2f} | {(fig['peak'] - fig['before_load']) / 1e9:.2f} "
                        f"| {ratio:.2f} | {'yes' if ratio <= TARGET else '**no**'} | {time.perf_counter() - start:.0f} "
                        f"| {when} |")
            print(rows[-1], flush=True)
    # Rows of chapters not measured in this run are kept from the earlier section, if they still exist.
    measured = {c.stem for c in a.chapters}
    existing = {p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    kept = [row for stem, row in earlier_rows().items() if stem not in measured and stem in existing]
    rows = sorted(rows + kept)
    ratios = [float(r.split("|")[4]) for r in rows if "failed" not in r]
    worst = max(ratios, default=worst)
    body = "\n".join([
        "## Memory per chapter: one copy of the weights (benchmarks/memory_check.py)",
        "",
        "Each chapter executed with `MODEL` set to a random-weight Llama-2-style checkpoint (Hugging Face directory,",
        "4 layers, dim 2048, GQA 32/8, FFN 8192, vocabulary 32,000: 374 M parameters) in float32. Peak = the kernel's",
        "peak resident memory (`ru_maxrss`) minus its resident memory just before `al.load`; ratio = that over the",
        f"weights' bytes. Target: at most {TARGET} (a model that fills 80% of a GPU still fits).",
        "",
        "Latest run: " + header,
        "",
        "Rows may come from different runs (the last column): the ratio does not depend on the load, the run",
        "time does.",
        "",
        "| chapter | weights GB | peak above baseline GB | ratio | within target | run time s | measured (UTC) |",
        "|---|---:|---:|---:|:-:|---:|---|",
        *rows,
        "",
        f"Largest ratio over the chapters in the table: {worst:.2f}.",
        "",
        *gpu_table(worst),
    ])
    write_section("memory_check", body)
    print(body)


if __name__ == "__main__":
    main()
