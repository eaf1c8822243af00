#!/usr/bin/env bash
# Build .gpu-wheels/ (git-ignored): the packages relight-stream needs that the lent GPU machines' image lacks
# (its python3 is 3.12 with torch, CuPy, timm, transformers, accelerate, onnxruntime, OpenCV, scikit-image,
# pandas, pyarrow, click, but no diffusers, open_clip, webdataset or sam2; DALI is too large to carry, so
# decode falls back to the CPU path there). Carry the folder to the device with scripts/gpu_session.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
W=.gpu-wheels
rm -rf "$W" && mkdir -p "$W"
"$PY" -m pip download -q --no-deps --only-binary=:all: -d "$W" diffusers==0.42.1 open-clip-torch==3.3.0 \
    webdataset==1.0.2 wids==0.1.11 braceexpand==0.1.7 ftfy==6.3.1 hydra-core==1.3.8 omegaconf==2.3.1
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d "$W" simplejpeg==1.9.0
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d "$W" wcwidth==0.9.4
# sdists, built here as pure-Python wheels
"$PY" -m pip wheel -q --no-deps -w "$W" antlr4-python3-runtime==4.9.3 iopath==0.1.10
SAM2_BUILD_CUDA=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$W" sam2==1.1.0
ls -la "$W"
du -sh "$W"
