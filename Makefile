# Two commands for a new user: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,tflite]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fpn-keras train --recipe retinanet_synthetic --out runs/demo --exist-ok --export saved_models/demo/1

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf runs build *.egg-info
