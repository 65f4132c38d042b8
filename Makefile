# Two entry points do all set-up: `make chat` and `make test`.
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.engram-installed
# A CPU build of torch unless a CUDA GPU is present (never pull a multi-GB CUDA build by accident).
HAVE_CUDA := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo yes)
TORCH_VERSION ?= 2.13.0
# llama-cpp-python is built from source: with CUDA where a GPU and the CUDA compiler are present
# (a CUDA build cannot even be imported without the GPU driver), Metal on Apple Silicon
# (llama-cpp-python's own default), for the CPU otherwise.
NVCC := $(if $(HAVE_CUDA),$(shell command -v nvcc 2>/dev/null \
          || (test -x /usr/local/cuda/bin/nvcc && echo /usr/local/cuda/bin/nvcc)))
LLAMA_CMAKE_ARGS := $(if $(NVCC),-DGGML_CUDA=on -DCMAKE_CUDA_COMPILER=$(NVCC))
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
	$(if $(NVCC),CMAKE_ARGS="$(LLAMA_CMAKE_ARGS) $$CMAKE_ARGS") $(PIP) install --quiet -e ".[test]"
ifneq ($(NVCC),)
	@# A venv made before nvcc was installed holds a CPU build: rebuild the same version with CUDA.
	$(PY) -c "import llama_cpp, sys; sys.exit(not llama_cpp.llama_supports_gpu_offload())" \
	  || CMAKE_ARGS="$(LLAMA_CMAKE_ARGS) $$CMAKE_ARGS" $(PIP) install --quiet --force-reinstall \
	       --no-cache-dir --no-deps "llama-cpp-python==$$($(PY) -c 'import llama_cpp; print(llama_cpp.__version__)')"
endif
	$(VENV)/bin/engram setup
	touch $(STAMP)

clean:
	rm -rf $(VENV)
