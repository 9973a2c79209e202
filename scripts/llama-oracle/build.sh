#!/usr/bin/env bash
# Builds llama.cpp at the reference commit (0c1e570, the one ../shared/reference was made
# with) plus `llama-oracle`, a teacher-forcing tool that prints each step's top-5 log-probs
# and can dump every tensor of one step, and `llama-bench`, for speed comparisons on the
# same machine. The source comes from the llama-cpp-python source
# package on PyPI, which vendors llama.cpp at exactly that commit (version 0.3.36).
# Output: target/llama-oracle/bin/{llama-oracle,llama-bench}. Needs cmake, g++, pip. About 10 min on 2 cores
# (JOBS=1 builds on one core, beside other work). CMAKE_EXTRA adds configure flags: where a
# native build dies with SIGILL (a VM that lists CPU features it does not run, e.g. AMX),
# CMAKE_EXTRA="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON
# -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON" builds for the reference machine's ISA (Zen 4).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
work="$root/target/llama-oracle"
want=0c1e57098bba43ac29e6e3b677cdceebdd22334f
mkdir -p "$work"
src="$work/dl/llama_cpp_python-0.3.36/vendor/llama.cpp"
if [ ! -d "$src" ]; then
    python3 -m pip download --quiet --no-deps --no-binary llama-cpp-python \
        llama-cpp-python==0.3.36 -d "$work/dl"
    tar xzf "$work/dl"/llama_cpp_python-0.3.36.tar.gz -C "$work/dl"
fi
# The package keeps the submodule's git metadata: check the commit it pins.
got="$(git -C "$src" rev-parse HEAD 2>/dev/null || echo unknown)"
if [ "$got" != "$want" ]; then
    echo "vendored llama.cpp is at $got, not the reference commit $want" >&2
    exit 1
fi
mkdir -p "$src/examples/oracle"
cp "$root/scripts/llama-oracle/oracle.cpp" "$src/examples/oracle/"
cat > "$src/examples/oracle/CMakeLists.txt" <<'CM'
add_executable(llama-oracle oracle.cpp)
target_link_libraries(llama-oracle PRIVATE llama ggml ${CMAKE_THREAD_LIBS_INIT})
target_compile_features(llama-oracle PRIVATE cxx_std_17)
CM
grep -q 'add_subdirectory(oracle)' "$src/examples/CMakeLists.txt" ||
    echo 'add_subdirectory(oracle)' >> "$src/examples/CMakeLists.txt"
# Native build with repacking on: the configuration the reference outputs came from.
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF ${CMAKE_EXTRA:-} > "$work/cmake.log"
cmake --build "$work/build" -j"${JOBS:-$(nproc)}" --target llama-oracle llama-bench > "$work/build.log"
mkdir -p "$work/bin"
ln -sf "$work/build/bin/llama-oracle" "$work/bin/llama-oracle"
ln -sf "$work/build/bin/llama-bench" "$work/bin/llama-bench"
echo "$work/bin/llama-oracle"
