# make setup: create .venv and install requirements; make demo: the whole toolkit on synthetic data;
# make test: the test suite; make test-video: the real pose backends (Ultralytics YOLO, in .venv-video).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
VIDEO_VENV := .venv-video

.PHONY: setup demo test test-video

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-video.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-video.txt
	touch $@

$(VIDEO_VENV)/.installed: requirements-yolo.txt
	$(PYTHON) -m venv $(VIDEO_VENV)
	$(VIDEO_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VIDEO_VENV)/bin/python -m pip install --quiet -r requirements-yolo.txt
	touch $@

demo: setup
	$(PY) -m lib.demo

test: setup
	$(PY) -m pytest -q tests

# The ONNX model the tests classify with is trained and exported by the project's .venv.
test-video: setup $(VIDEO_VENV)/.installed
	PROJECT_PYTHON=$(PY) $(VIDEO_VENV)/bin/python -m pytest -q -rs tests/test_video_backends.py
