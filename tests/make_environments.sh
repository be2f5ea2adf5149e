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
# Idempotent: each is rebuilt only when its inputs changed since it was built (its stamp file holds
# their hash: its own build function and the helpers it calls, constraints.txt, and pyproject.toml
# for the wheelhouse) or it is missing. The first build downloads about 1.5 GB and
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

build_slicer_venv() {
    rm -rf "$SLICER_VENV"
    "$PYTHON" -m venv "$SLICER_VENV"
    pip_install "$SLICER_VENV/bin/python" constraints.txt slicer-core PySide6-Essentials numpy pytest
    # importing vtk and Qt from a cold disk on a busy machine has taken minutes
    "$SLICER_VENV/bin/python" -c "import slicer, slicer.util, PySide6.QtUiTools, pytest, numpy; slicer.vtkMRMLScene()"
}

build_runtime_venv() {
    local base
    base="$(runtime_base_python)"
    rm -rf "$RUNTIME_VENV"
    "$base" -m venv "$RUNTIME_VENV"
    if "$base" -c "import sys; sys.exit(sys.version_info[:2] != (3, 12))"; then
        # Slicer's numpy, not the project's
        pip_install "$RUNTIME_VENV/bin/python" <(grep -v -i '^numpy==' constraints.txt) \
            "numpy==$SLICER_510_NUMPY" SimpleITK onnxruntime
    else
        pip_install "$RUNTIME_VENV/bin/python" constraints.txt numpy SimpleITK onnxruntime
    fi
    "$RUNTIME_VENV/bin/python" -c "import numpy, SimpleITK, onnxruntime"
    echo "make_environments: $RUNTIME_VENV has $("$base" --version) and numpy" \
        "$("$RUNTIME_VENV/bin/python" -c "import numpy; print(numpy.__version__)")"
}

build_wheelhouse() {
    rm -rf "$WHEELHOUSE"
    # the project's core dependencies and its torch extra, resolved as `pip install usdespeckle[torch]`
    # would; the project's own wheel is what the test builds
    "$PYTHON" -m pip download -q -c constraints.txt -d "$WHEELHOUSE" "$ROOT[torch]"
    rm -f "$WHEELHOUSE"/usdespeckle-*
}

# build DIR FUNCTION [FILE...]: run FUNCTION (which makes DIR) unless DIR's stamp matches the hash of
# FUNCTION's source, the helpers it calls, SLICER_510_NUMPY, constraints.txt and the FILEs.
build() {
    local dir=$1 function=$2 text start
    shift 2
    text="$({ declare -f "$function" pip_install runtime_base_python
        echo "$SLICER_510_NUMPY"
        cat constraints.txt "$@"; } | sha256sum | cut -c1-16)"
    if [[ "$FORCE" != "--force" && -f "$dir/.usdespeckle-stamp" && "$(cat "$dir/.usdespeckle-stamp")" == "$text" ]]
    then
        echo "make_environments: $dir is up to date"
        return
    fi
    start=$(date +%s)
    "$function"
    echo "$text" >"$dir/.usdespeckle-stamp"
    echo "make_environments: built $dir in $(($(date +%s) - start)) s ($(du -sh "$dir" | cut -f1))"
}

build "$SLICER_VENV" build_slicer_venv
build "$RUNTIME_VENV" build_runtime_venv
build "$WHEELHOUSE" build_wheelhouse pyproject.toml

bash training/setup_monailabel_env.sh
