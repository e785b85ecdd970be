#!/usr/bin/env bash
# The test command (README, .ci/run): installs what the tests need, then runs them all.
#   apt: inkscape + xvfb + xauth (real-Inkscape tests), gir1.2-gtk-3.0 + python3-gi-cairo (the progress
#        window and its drawings), x11-utils (xwininfo: the window's real geometry)
#   .venv: PyTorch + torchvision + open_clip (a consistent stack), the engine, pytest, inkex 1.4.1
# Extra arguments go to pytest, e.g. `bash tests/run.sh -k raster`.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v inkscape >/dev/null || ! command -v xvfb-run >/dev/null || ! command -v xauth >/dev/null \
   || ! command -v xwininfo >/dev/null \
   || ! /usr/bin/python3 -c "import gi; gi.require_foreign('cairo')" 2>/dev/null; then
  echo "== installing inkscape, xvfb, xauth, x11-utils, GTK + cairo for Python from apt"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq inkscape xvfb xauth x11-utils gir1.2-gtk-3.0 python3-gi-cairo >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  python3 -m venv .venv
fi
# -qq: errors only (pip's warnings about this machine's own index configuration are not CI failures)
PIP=(.venv/bin/python -m pip install -qq --disable-pip-version-check)
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  # the smallest build this machine can use, chosen as install.py chooses (CPU wheels without an
  # NVIDIA GPU; pip's configured index; the default index when PyTorch's cannot be reached)
  read -r -a TORCH <<<"$(python3 install.py --venv .venv --print-torch-spec)"
  echo "== installing PyTorch: pip install ${TORCH[*]}"
  "${PIP[@]}" "${TORCH[@]}"
fi
.venv/bin/python -c "from importlib.metadata import version as v; print(f'torch=={v(\"torch\")}\ntorchvision=={v(\"torchvision\")}')" \
  >.venv/torch-constraints.txt   # nothing below may swap the build
echo "== installing the engine and test tools"
"${PIP[@]}" -c .venv/torch-constraints.txt -e ".[test]"
# inkex from PyPI for the extension's unit tests, without its GUI extra (PyGObject needs cairo
# headers): --no-deps, with its other dependencies listed, so pip has no missing PyGObject to report
"${PIP[@]}" --no-deps "inkex==1.4.1" cssselect "lxml<6" packaging pyparsing pyserial "scour<0.38" six tinycss2 webencodings

echo "== running the tests"
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest -q -ra "$@"
