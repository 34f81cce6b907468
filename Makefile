# make setup: create .venv and install requirements; make demo: the whole toolkit on synthetic data;
# make test: the test suite; make yolo-pose: export YOLO11n-pose to ONNX for the yolo pose backend;
# make test-video: the real pose backends on real images and videos.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
YOLO_POSE := checkpoint/pose/yolo11n-pose.onnx
YOLO_EXPORT := checkpoint/pose/.export-tools

.PHONY: setup demo test yolo-pose test-video

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-video.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-video.txt
	touch $@

# Ultralytics and torchvision only for the export, beside the project's torch; removed once it is written.
$(YOLO_POSE): requirements-yolo.txt | setup
	rm -rf $(YOLO_EXPORT)
	$(PY) -m pip install --quiet --no-deps --target $(YOLO_EXPORT) -r requirements-yolo.txt
	PYTHONPATH=$(YOLO_EXPORT) $(PY) deployment/export_yolo_pose.py --out $@
	rm -rf $(YOLO_EXPORT)

yolo-pose: $(YOLO_POSE)

demo: setup
	$(PY) -m lib.demo

test: setup
	$(PY) -m pytest -q tests

test-video: setup $(YOLO_POSE)
	$(PY) -m pytest -q -rs tests/test_video_backends.py
