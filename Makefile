# The two commands: `make run` (the whole pipeline on the embedded default) and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROFILE ?= demo

.PHONY: run test lab tensorboard doctor env clean-env

$(STAMP): requirements.txt pyproject.toml scripts/setup.sh $(wildcard requirements-mediapipe.txt)
	scripts/setup.sh
	touch $(STAMP)

env: $(STAMP)

run: $(STAMP)
	$(PY) -m handlib run --profile $(PROFILE) $(if $(FRESH),--fresh)

test: $(STAMP)
	HANDLIB_HEADLESS=1 $(PY) -m pytest tests notebooks --nbval-lax -p no:cacheprovider

doctor: $(STAMP)
	$(PY) -m handlib doctor

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=.

tensorboard: $(STAMP)
	$(VENV)/bin/tensorboard --logdir runs --bind_all

clean-env:
	rm -rf $(VENV)
