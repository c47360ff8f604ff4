"""Does each chapter hold the weights once? Peak memory of every chapter run on a ~1.5 GB checkpoint.

A reader on a Colab T4 runs a chapter on a model that fills most of the GPU; a chapter that loads the model a
second time, or keeps logits for every position of a long prompt, does not fit. On a CPU the same question is
asked of the kernel's resident memory: each chapter is executed with ``MODEL`` set to a random-weight
checkpoint of about 1.5 GB (float32), and its peak resident memory above what the kernel held just before the
model was loaded is divided by the bytes of the model's weights. Target: at most 1.25 for every chapter.

    python benchmarks/memory_check.py [--chapters notebooks/05_rope.ipynb ...] [--keep DIR]

Writes its section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
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
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = write_big_checkpoint(a.keep or Path(tmp) / "ckpt")
        rows, worst = [], 0.0
        for chapter in a.chapters:
            start = time.perf_counter()
            try:
                _, fig = execute_chapter(chapter, str(ckpt), "float32", memory=True, timeout=1800)
            except CellExecutionError as e:
                rows.append(f"| {chapter.stem} | failed: {str(e).splitlines()[-1][:80]} | | | |")
                print(rows[-1], flush=True)
                continue
            ratio = (fig["peak"] - fig["before_load"]) / fig["weights"]
            worst = max(worst, ratio)
            rows.append(f"| {chapter.stem} | {fig['weights'] / 1e9:.2f} | {(fig['peak'] - fig['before_load']) / 1e9:.2f} "
                        f"| {ratio:.2f} | {'yes' if ratio <= TARGET else '**no**'} | {time.perf_counter() - start:.0f} |")
            print(rows[-1], flush=True)
    body = "\n".join([
        "## Memory per chapter: one copy of the weights (benchmarks/memory_check.py)",
        "",
        "Each chapter executed with `MODEL` set to a random-weight Llama-2-style checkpoint (Hugging Face directory,",
        "4 layers, dim 2048, GQA 32/8, FFN 8192, vocabulary 32,000: 374 M parameters) in float32. Peak = the kernel's",
        "peak resident memory (`ru_maxrss`) minus its resident memory just before `al.load`; ratio = that over the",
        f"weights' bytes. Target: at most {TARGET} (a model that fills 80% of a GPU still fits).",
        "",
        header,
        "",
        "| chapter | weights GB | peak above baseline GB | ratio | within target | run time s |",
        "|---|---:|---:|---:|:-:|---:|",
        *rows,
        "",
        f"Largest ratio: {worst:.2f}.",
    ])
    write_section("memory_check", body)
    print(body)


if __name__ == "__main__":
    main()
