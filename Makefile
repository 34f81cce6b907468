# make setup: create .venv and install requirements; make demo: the whole toolkit on synthetic data;
# make test: the test suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_PKL := data/action/demo_synthetic.pkl

.PHONY: setup demo test

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(DEMO_PKL): lib/data/synthetic.py | setup
	$(PY) -m lib.data.synthetic --preset demo --out $(DEMO_PKL) --seed 0

demo: setup $(DEMO_PKL)
	$(PY) -m lib.data.summary --config configs/action/demo_synthetic.yaml

test: setup
	$(PY) -m pytest -q tests
