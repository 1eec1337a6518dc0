#!/usr/bin/env bash
# Fetch, here, the Python 3.12 wheels that a lent GPU machine lacks (its image has torch, torchvision, timm,
# scikit-learn, scipy, tqdm, tensorboard, safetensors, matplotlib, pillow, numpy; it cannot reach a package
# registry), into .whl/ (git-ignored), for `benchmarks/device_run.sh` there: carry ".whl" in the device call.
# About 26 MB; the repository's tracked files are about 32 MB, under the 64 MiB a device call carries.
# spconv-cu126 + cumm-cu126 (94 MB) do not fit beside them: the device check runs the dense backbone.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
mkdir -p .whl
"$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    kornia==0.9.0 kornia_rs==0.2.0 OpenEXR==3.5.3 trimesh==5.2.0 embreex==4.4.0.post1 manifold3d==3.5.4 rtree==1.4.1
du -sh .whl
