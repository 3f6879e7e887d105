#!/usr/bin/env bash
# Set up a fresh machine for kdframe: Fashion-MNIST from Debian's package (when apt-get is available
# and the data is not there yet) and a virtual environment .venv with kdframe and its dev, deploy and tune
# extras, and the plugin template of examples/plugin-template.
# Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA_DIR=/usr/share/datasets/fashion-mnist
if [ ! -d "$DATA_DIR" ] && [ -z "${KDFRAME_DATA:-}" ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    echo "setup: installing Fashion-MNIST (Debian package dataset-fashion-mnist)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "setup: no apt-get here; put the Fashion-MNIST IDX files in a folder and set KDFRAME_DATA to it" >&2
  fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import kdframe, pytest, jsonschema, hypothesis, onnx, onnxscript, onnxruntime" >/dev/null 2>&1 \
   || [ pyproject.toml -nt .venv/.kdframe-installed ]; then
  echo "setup: installing kdframe and its dependencies into .venv (PyTorch takes a minute)"
  .venv/bin/python -m pip install --quiet -e ".[dev,deploy,tune]"
  touch .venv/.kdframe-installed
fi
# The plugin template is installed like any third-party plugin, so that its tests run with kdframe's.
TEMPLATE=examples/plugin-template
if ! .venv/bin/python -c "import kdframe_template" >/dev/null 2>&1 \
   || [ "$TEMPLATE/pyproject.toml" -nt .venv/.kdframe-template-installed ]; then
  echo "setup: installing the plugin template ($TEMPLATE) into .venv"
  .venv/bin/python -m pip install --quiet -e "$TEMPLATE"
  touch .venv/.kdframe-template-installed
fi
echo "setup: ready"
