# Two commands for a new user: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

# Every optional extra (tfds, tflite, onnx, video) plus test: the suite exercises them all.
# A venv made before fpn_keras moved to plain `tensorflow` has tensorflow-cpu: both install
# one tensorflow/ folder, so both are removed before the install puts back plain tensorflow.
$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	if $(PY) -m pip show -q tensorflow-cpu 2>/dev/null; then $(PY) -m pip uninstall -y -q tensorflow-cpu tensorflow; fi
	$(PY) -m pip install --quiet -e ".[all,test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fpn-keras train --recipe retinanet_synthetic --out runs/demo --exist-ok --export saved_models/demo/1

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf runs build *.egg-info
