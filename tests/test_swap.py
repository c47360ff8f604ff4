"""The one-line swap: every chapter, executed with ``MODEL`` set to checkpoints other than the bundled one.

A reader who changes ``MODEL`` (and ``DTYPE``) must see every cell run. Three random-weight checkpoints in
the formats readers bring (see ``checkpoints.py``), each in a dtype of its own, so the three dtypes a GPU
or CPU would use are all exercised: a Llama-2-style Hugging Face directory in float16 (a T4's dtype), a
Llama-3.2-style one in bfloat16 (an A100's), a Meta directory in float32 (a CPU's). Outputs are not compared
(random weights say random things); every cell must run, and every check a chapter asserts must hold.
"""

import sys
from pathlib import Path

import pytest
from checkpoints import SWAP_STYLES, write_checkpoint

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from run_chapter import execute_chapter  # noqa: E402

CHAPTERS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
DTYPES = {"llama2-hf": "float16", "llama3.2-hf": "bfloat16", "llama2-meta": "float32"}
assert set(DTYPES) == set(SWAP_STYLES)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    out = tmp_path_factory.mktemp("swap")
    return {name: write_checkpoint(name, out) for name in SWAP_STYLES}


@pytest.mark.slow
@pytest.mark.parametrize("style", SWAP_STYLES)
@pytest.mark.parametrize("chapter", CHAPTERS, ids=[c.stem for c in CHAPTERS])
def test_chapter_runs_with_another_model(chapter, style, checkpoints):
    from nbclient.exceptions import CellExecutionError

    try:
        execute_chapter(chapter, str(checkpoints[style]), DTYPES[style])
    except CellExecutionError as e:
        pytest.fail(f"{chapter.name} with MODEL={style} DTYPE={DTYPES[style]}:\n{e}", pytrace=False)
