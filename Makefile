# Two entry points do all set-up: `make chat` and `make test`.
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.engram-installed
# A CPU build of torch unless a CUDA GPU is present (never pull a multi-GB CUDA build by accident).
HAVE_CUDA := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo yes)
TORCH_VERSION ?= 2.13.0
ARGS ?=

.PHONY: chat test install bench clean

chat: $(STAMP)
	$(VENV)/bin/engram $(ARGS)

test: $(STAMP)
	$(PY) -m pytest $(ARGS)

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip wheel
ifeq ($(HAVE_CUDA),yes)
	$(PIP) install --quiet "torch==$(TORCH_VERSION)"
else
	$(PIP) install --quiet "torch==$(TORCH_VERSION)+cpu" \
	  || $(PIP) install --quiet "torch==$(TORCH_VERSION)" --index-url https://download.pytorch.org/whl/cpu
endif
	$(PIP) install --quiet -e ".[test]"
	$(VENV)/bin/engram setup
	touch $(STAMP)

clean:
	rm -rf $(VENV)
