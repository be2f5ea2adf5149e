#!/usr/bin/env bash
# Build what the tests need besides the project's .venv, before they run, so that no test installs
# anything. The README's test command and .ci/run call this after creating .venv. Exact versions
# come from constraints.txt.
#
#   .venv-slicer/               slicer-core (Slicer's MRML and slicer.util without the application),
#                               PySide6 and pytest: tests/slicer/, run by tests/test_slicer_module.py
#   .venv-slicer/runtime-venv/  numpy, SimpleITK and onnxruntime only, what the extension's runtime
#                               finds in Slicer (on Python 3.12 with numpy 2.0.2, Slicer 5.10's, when
#                               a Python 3.12 is found): tests/test_slicer_runtime.py
#   .wheelhouse/                wheels of the core install's dependencies and of torch, from which
#                               tests/test_packaging.py installs the built wheel offline (--no-index)
#   .venv-monailabel/           the MONAI Label server, by training/setup_monailabel_env.sh:
#                               tests/test_monailabel.py
#
# Usage: bash tests/make_environments.sh [--force]
# Idempotent: each is rebuilt only when this script or constraints.txt changed since it was built
# (a stamp file holds their hash) or it is missing. The first build downloads about 1.5 GB and
# takes a few minutes (the MONAI Label environment 3-4 more); later calls take seconds.
set -euo pipefail
SCRIPT="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$SCRIPT")/.."
ROOT="$(pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"  # the project's interpreter: the tests' Python version
export PIP_DISABLE_PIP_VERSION_CHECK=1
FORCE="${1:-}"

SLICER_VENV="$ROOT/.venv-slicer"
RUNTIME_VENV="$SLICER_VENV/runtime-venv"
WHEELHOUSE="$ROOT/.wheelhouse"
SLICER_510_NUMPY="2.0.2"  # what Slicer 5.10 ships with its Python 3.12.10
STAMP_TEXT="$(cat "$SCRIPT" constraints.txt | sha256sum | cut -c1-16)"

up_to_date() {  # up_to_date DIR: built from this script and constraints.txt as they are now
    [[ "$FORCE" != "--force" && -f "$1/.usdespeckle-stamp" && "$(cat "$1/.usdespeckle-stamp")" == "$STAMP_TEXT" ]]
}

stamp() {
    echo "$STAMP_TEXT" >"$1/.usdespeckle-stamp"
}

pip_install() {  # pip_install PYTHON CONSTRAINTS PACKAGE...
    local python=$1 constraints=$2
    shift 2
    "$python" -m pip install -q -c "$constraints" "$@"
}

# A Python 3.12 like Slicer 5.10's: $SLICERDESPECKLE_RUNTIME_PYTHON, else python3.12 on PATH or
# pyenv's, else the project's. A pyenv shim may exist and refuse to run, hence the probe.
runtime_base_python() {
    local candidate
    for candidate in "${SLICERDESPECKLE_RUNTIME_PYTHON:-}" "$(command -v python3.12 || true)" \
        "$HOME"/.pyenv/versions/3.12*/bin/python3.12; do
        if [[ -n "$candidate" && -x "$candidate" ]] && "$candidate" -c "import venv" 2>/dev/null; then
            echo "$candidate"
            return
        fi
    done
    echo "$PYTHON"
}

if up_to_date "$SLICER_VENV"; then
    echo "make_environments: $SLICER_VENV is up to date"
else
    start=$(date +%s)
    rm -rf "$SLICER_VENV"
    "$PYTHON" -m venv "$SLICER_VENV"
    pip_install "$SLICER_VENV/bin/python" constraints.txt slicer-core PySide6-Essentials numpy pytest
    # importing vtk and Qt from a cold disk on a busy machine has taken minutes
    "$SLICER_VENV/bin/python" -c "import slicer, slicer.util, PySide6.QtUiTools, pytest, numpy; slicer.vtkMRMLScene()"
    stamp "$SLICER_VENV"
    echo "make_environments: built $SLICER_VENV in $(($(date +%s) - start)) s"
fi

if up_to_date "$RUNTIME_VENV"; then
    echo "make_environments: $RUNTIME_VENV is up to date"
else
    start=$(date +%s)
    base="$(runtime_base_python)"
    rm -rf "$RUNTIME_VENV"
    "$base" -m venv "$RUNTIME_VENV"
    if "$base" -c "import sys; sys.exit(sys.version_info[:2] != (3, 12))"; then
        numpy="numpy==$SLICER_510_NUMPY"  # Slicer's numpy, not the project's
    else
        numpy="numpy==$(grep -i '^numpy==' constraints.txt | cut -d= -f3)"
    fi
    pip_install "$RUNTIME_VENV/bin/python" <(grep -v -i '^numpy==' constraints.txt) "$numpy" SimpleITK onnxruntime
    "$RUNTIME_VENV/bin/python" -c "import numpy, SimpleITK, onnxruntime"
    stamp "$RUNTIME_VENV"
    echo "make_environments: built $RUNTIME_VENV ($("$base" --version), $numpy) in $(($(date +%s) - start)) s"
fi

if up_to_date "$WHEELHOUSE"; then
    echo "make_environments: $WHEELHOUSE is up to date"
else
    start=$(date +%s)
    rm -rf "$WHEELHOUSE"
    # the project's core dependencies and its torch extra, resolved as `pip install usdespeckle[torch]`
    # would; the project's own wheel is what the test builds
    "$PYTHON" -m pip download -q -c constraints.txt -d "$WHEELHOUSE" "$ROOT[torch]"
    rm -f "$WHEELHOUSE"/usdespeckle-*
    stamp "$WHEELHOUSE"
    echo "make_environments: filled $WHEELHOUSE in $(($(date +%s) - start)) s ($(du -sh "$WHEELHOUSE" | cut -f1))"
fi

bash training/setup_monailabel_env.sh
