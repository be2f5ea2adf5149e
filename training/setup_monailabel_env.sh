#!/usr/bin/env bash
# Create .venv-monailabel: the MONAI Label server's own environment, beside the project's .venv.
#
# MONAI Label 0.8.5 needs numpy<2 (pydicom-seg) and pydicom<3, and its full dependency list pulls
# torchvision, sam2, mlflow and a CUDA torch. The server core that our app uses (FastAPI endpoints,
# LocalDatastore, BasicInferTask) imports none of torchvision, sam2, mlflow, numpymaxflow or
# openslide, so we install monailabel with --no-deps and list what the core imports, on the
# project's own CPU torch (torch==2.13.0). The project itself goes in with --no-deps too (its
# pyproject pins numpy>=1.26 and heavy extras the server does not use), plus the runtime modules
# the inference path imports. `pip check` therefore reports monailabel's unused extras as missing:
# that is expected. The environment is about 2.3 GB (torch CPU 1.1 GB, itk-io 0.55 GB); building it
# takes about 3-4 minutes on 2 cores (wheels from PyPI and the local torch wheel).
#
# Usage: bash training/setup_monailabel_env.sh [--force]
# Idempotent: skips when the environment exists, runs, and was built from this script's current
# requirement list (a stamp file holds its hash); a full import check runs after each build.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
VENV="${MONAILABEL_VENV:-$ROOT/.venv-monailabel}"
PYTHON="${PYTHON:-python3}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

REQUIREMENTS=(
    "torch==2.13.0"
    "numpy>=1.26,<2"
    "monai==1.6.1"
    "monailabel==0.8.5"
    # monailabel's server core (its install_requires minus torchvision, sam2, mlflow, numpymaxflow,
    # openslide, lmdb, gdown, ninja, which only its sample apps and scribbles use)
    "uvicorn>=0.29.0" "pydantic>=2.7.0" "pydantic-settings>=2.2.1" "python-dotenv>=1.0.1"
    "fastapi>=0.110.2" "python-multipart>=0.0.9" "httpx>=0.27.0" "schedule>=1.2.1"
    "dicomweb-client[gcp]>=0.59.1,<0.60" "timeloop>=1.0.2" "expiringdict>=1.2.2"
    "expiring_dict>=1.1.0" "cachetools>=5.3.3" "watchdog>=4.0.0" "pydicom>=2.4.4,<3"
    "pydicom-seg>=0.4.1" "pynetdicom>=2.0.2,<3" "pynrrd>=1.0.0" "girder-client>=3.2.3"
    "einops>=0.7.0" "pyyaml>=6.0.1" "filelock>=3.11.0" "passlib>=1.7.4" "pyjwt>=2.8.0"
    "bcrypt>=4.1.2" "shapely>=2.0.4" "requests>=2.31.0" "requests-toolbelt>=1.0.0"
    "urllib3>=2.2.1" "google-auth>=2.29.0" "pytorch-ignite" "psutil" "tqdm" "fire"
    # monailabel's result writer imports itk at start-up: itk-io (with itk-core) is enough for that,
    # about 0.55 GB where the full itk meta-package is 1.6 GB
    "itk-io>=5.4"
    # the project's runtime modules used by the despeckle and simulate tasks
    "SimpleITK>=2.3" "nibabel>=5.0" "scipy>=1.11" "scikit-image>=0.22" "scikit-learn>=1.3"
    "pillow>=10" "onnxruntime>=1.18"
)
STAMP_TEXT="$(printf '%s\n' "${REQUIREMENTS[@]}" | sha256sum | cut -c1-16)"
STAMP="$VENV/.usdespeckle-stamp"

check_env() {
    "$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
import monailabel.app  # noqa: F401  (the FastAPI app: every server-core import)
import monailabel.tasks.infer.basic_infer  # noqa: F401
import SimpleITK, torch, usdespeckle  # noqa: F401, E401
assert md.version("monailabel") == "0.8.5", md.version("monailabel")
EOF
}

quick_check() {  # cheap: the interpreter runs and the pinned versions are installed
    "$VENV/bin/python" -c 'import importlib.metadata as md, sys; sys.exit(md.version("monailabel") != "0.8.5" or not md.version("usdespeckle"))'
}

if [[ "${1:-}" != "--force" && -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$STAMP_TEXT" ]]; then
    if quick_check 2>/dev/null; then
        echo "setup_monailabel_env: $VENV is up to date (--force rebuilds it)"
        exit 0
    fi
    echo "setup_monailabel_env: $VENV exists but is broken; rebuilding"
fi

start=$(date +%s)
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
# torch first and alone, pinned, so nothing later can swap in a CUDA build.
"$VENV/bin/pip" install -q "torch==2.13.0"
"$VENV/bin/pip" install -q --no-deps "monailabel==0.8.5"
grep -v '^monailabel==' <(printf '%s\n' "${REQUIREMENTS[@]}") | xargs "$VENV/bin/pip" install -q
"$VENV/bin/pip" install -q --no-deps -e "$ROOT"
check_env
echo "$STAMP_TEXT" >"$STAMP"
end=$(date +%s)
echo "setup_monailabel_env: built $VENV in $((end - start)) s ($(du -sh "$VENV" | cut -f1))"
