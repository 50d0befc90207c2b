#!/usr/bin/env bash
# Prepare here (no GPU needed) the wheels the GPU check needs that the device image lacks, into .whl/
# (ignored by git through .git/info/exclude; the device tool carries it). Python 3.12 on the device.
set -euo pipefail
cd "$(dirname "$0")/.." || exit 2
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> "$(git rev-parse --git-common-dir)/info/exclude"
rm -rf .whl && mkdir -p .whl
mapfile -t wants < <(DS_ACCELERATOR=cpu .venv/bin/python bench/_gpu_wheels.py 2>/dev/null)
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
for want in "${wants[@]}"; do
  case $want in
    deepspeed==*)  # an sdist only: build a pure-Python wheel here (its ops compile lazily, there)
      DS_BUILD_OPS=0 .venv/bin/pip wheel -q --no-deps --no-build-isolation -w .whl "$want" ;;
    *) .venv/bin/pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
         "${plat[@]}" -d .whl "$want" ;;
  esac
done
du -sh .whl && ls .whl
