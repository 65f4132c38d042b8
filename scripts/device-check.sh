#!/usr/bin/env bash
# Engram on one NVIDIA GPU within a 15-minute budget: a CUDA llama-cpp-python, then the
# generation and learning benchmarks on the built-in model, their figures printed as JSON.
#
#   scripts/device-check.sh wheel [CC]  ahead of time, on a CPU machine: build a CUDA wheel of
#                                       the venv's llama-cpp-python version for compute
#                                       capability CC only (default 90: H100/H200; small, and
#                                       no GPU time spent compiling) into dist/cuda/, with the
#                                       CUDA compiler from PyPI's nvidia-cuda-nvcc-cu12 (or
#                                       /usr/local/cuda where there is one)
#   scripts/device-check.sh             on the GPU machine: install dist/cuda/*.whl offline, or
#                                       build for this GPU with its nvcc, then run the benches
#
# Both use the project's venv (.venv, or $VENV): `make install` first.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=$VENV/bin/python
WHEELS=dist/cuda
LLAMA_VERSION=$("$PY" -c 'import llama_cpp; print(llama_cpp.__version__)')

if [[ ${1:-} == wheel ]]; then
  CC=${2:-90}
  if [[ -x /usr/local/cuda/bin/nvcc ]]; then
    CUDA=/usr/local/cuda
  else  # the compiler, headers and libraries from PyPI, merged into one toolkit tree
    TOOLS=$(mktemp -d)
    "$PY" -m pip install --quiet --target "$TOOLS/py" nvidia-cuda-nvcc-cu12 \
      nvidia-cuda-runtime-cu12 nvidia-cuda-cccl-cu12 nvidia-cublas-cu12
    CUDA=$TOOLS/cuda
    mkdir -p "$CUDA/bin" "$CUDA/include" "$CUDA/lib64"
    for part in "$TOOLS"/py/nvidia/*/; do
      for kind in bin include lib nvvm; do
        [[ -d $part$kind ]] || continue
        case $kind in
          lib) cp -rs "$part$kind"/. "$CUDA/lib64/" ;;
          nvvm) cp -rs "$part$kind" "$CUDA/" ;;
          *) cp -rs "$part$kind"/. "$CUDA/$kind/" ;;
        esac
      done
    done
    for lib in cudart cublas cublasLt; do  # the wheels ship only the versioned names
      ln -sf "$(ls "$CUDA"/lib64/lib$lib.so.* | head -1)" "$CUDA/lib64/lib$lib.so"
    done
  fi
  mkdir -p "$WHEELS"
  # GGML_CUDA_NO_VMM: no link against the driver's libcuda, which a CPU machine lacks.
  CUDACXX=$CUDA/bin/nvcc CUDAToolkit_ROOT=$CUDA \
  CMAKE_ARGS="-DGGML_CUDA=on -DGGML_CUDA_NO_VMM=on -DCMAKE_CUDA_ARCHITECTURES=$CC -DCMAKE_CUDA_COMPILER=$CUDA/bin/nvcc" \
    "$PY" -m pip wheel --no-deps --no-cache-dir --wheel-dir "$WHEELS" "llama-cpp-python==$LLAMA_VERSION"
  ls -l "$WHEELS"
  exit 0
fi

nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv,noheader
if ! "$PY" -c 'import llama_cpp, sys; sys.exit(not llama_cpp.llama_supports_gpu_offload())' 2>/dev/null; then
  if compgen -G "$WHEELS/llama_cpp_python-*.whl" >/dev/null; then
    "$PY" -m pip install --quiet --no-index --no-deps --force-reinstall "$WHEELS"/llama_cpp_python-*.whl
  else
    NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
    CC=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)
    CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$CC -DCMAKE_CUDA_COMPILER=$NVCC" \
      "$PY" -m pip install --quiet --no-deps --force-reinstall --no-cache-dir \
      "llama-cpp-python==$LLAMA_VERSION"
  fi
fi
# A wheel built against PyPI's CUDA libraries finds them in the venv, where torch's CUDA build
# puts the same packages.
LIBS=$("$PY" -c 'import glob, site; print(":".join(glob.glob(site.getsitepackages()[0] + "/nvidia/*/lib")))')
export LD_LIBRARY_PATH=${LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
"$PY" -c 'import llama_cpp, sys; ok = llama_cpp.llama_supports_gpu_offload(); print("llama.cpp GPU offload:", ok); sys.exit(not ok)'

ENGRAM=$VENV/bin/engram
"$ENGRAM" doctor
echo "== bench generate"
timeout 240 "$ENGRAM" bench generate --json
echo "== bench learn"
timeout 420 "$ENGRAM" bench learn --sessions 3 --counterfact 0 --json
