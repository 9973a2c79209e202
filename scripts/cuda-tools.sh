#!/usr/bin/env bash
# Installs the CUDA tools that build and check kernels/ptx without a GPU or a toolkit: NVRTC
# (libnvrtc.so.12 and libnvrtc-builtins.so.12.9 in one folder) and ptxas, both 12.9.86, from
# their Python wheels, into target/cuda-tools. Prints the two folders as shell variables:
#   eval "$(scripts/cuda-tools.sh)"   # sets NVRTC_DIR and PTXAS
set -euo pipefail
cd "$(dirname "$0")/.."
dest=target/cuda-tools
ver=12.9.86
if [ ! -x "$dest/nvcc/nvidia/cuda_nvcc/bin/ptxas" ] || [ ! -e "$dest/nvrtc/nvidia/cuda_nvrtc/lib/libnvrtc.so.12" ]; then
  mkdir -p "$dest/wheels"
  pip=(python3 -m pip)
  if ! "${pip[@]}" --version >/dev/null 2>&1; then scripts/py-env.sh >&2; pip=(target/pyenv/bin/pip); fi
  "${pip[@]}" download -q --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 -d "$dest/wheels" \
    "nvidia-cuda-nvrtc-cu12==$ver" "nvidia-cuda-nvcc-cu12==$ver" >&2
  command -v unzip >/dev/null || { echo "cuda-tools: unzip is needed" >&2; exit 2; }
  # unzip keeps the executable bit of ptxas.
  unzip -q -o "$dest"/wheels/nvidia_cuda_nvrtc_cu12-*.whl -d "$dest/nvrtc"
  unzip -q -o "$dest"/wheels/nvidia_cuda_nvcc_cu12-*.whl -d "$dest/nvcc"
fi
echo "NVRTC_DIR=$PWD/$dest/nvrtc/nvidia/cuda_nvrtc/lib"
echo "PTXAS=$PWD/$dest/nvcc/nvidia/cuda_nvcc/bin/ptxas"
