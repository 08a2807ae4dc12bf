#!/usr/bin/env bash
# Opt-in set-up of the peers inferd is measured against (never part of the default install or CI):
#  - llama.cpp's llama-server and llama-bench, built from the llama.cpp sources vendored in the
#    llama-cpp-python sdist on PyPI (nothing else is downloaded);
#  - the naive transformers loop runs from the project's own venv (transformers is a dependency).
# Output: .bench/llama.cpp/build/bin/{llama-server,llama-bench}. Takes ~7-15 min on 2 cores.
# LLAMA_ISA=avx2 builds llama.cpp for AVX2+FMA only (GGML_NATIVE=OFF), the peer of inferd's
# forced AVX2 path on a CPU that has more; the default builds for this machine (GGML_NATIVE=ON).
set -euo pipefail
cd "$(dirname "$0")/.."
root=.bench/llama.cpp
if [ -x "$root/build/bin/llama-server" ] && [ -x "$root/build/bin/llama-bench" ]; then
  echo "peers already built in $root"; exit 0
fi
mkdir -p .bench/src
python3 -m pip download --no-deps --no-binary :all: -d .bench/src "llama-cpp-python==${LLAMA_CPP_PYTHON_VERSION:-0.3.36}" >/dev/null
sdist=$(ls .bench/src/llama_cpp_python-*.tar.gz | head -1)
rm -rf "$root" && mkdir -p "$root"
tar -xzf "$sdist" -C .bench/src
src=$(ls -d .bench/src/llama_cpp_python-*/vendor/llama.cpp | head -1)
case "${LLAMA_ISA:-native}" in
  native) isa_flags=(-DGGML_NATIVE=ON) ;;
  avx2) isa_flags=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF) ;;
  *) echo "LLAMA_ISA must be native or avx2, not ${LLAMA_ISA}" >&2; exit 2 ;;
esac
cmake -S "$src" -B "$root/build" -DCMAKE_BUILD_TYPE=Release "${isa_flags[@]}" -DLLAMA_OPENSSL=OFF \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON >/dev/null
cmake --build "$root/build" --target llama-server llama-bench -j"$(nproc)"
ls -la "$root/build/bin/"
