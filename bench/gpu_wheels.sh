#!/usr/bin/env bash
# The wheels a lent GPU machine lacks, for its Python (3.12, manylinux x86_64), into .whl/:
#   bash bench/gpu_wheels.sh        then carry .whl in the device call (bench/gpu_check.py, scripts/gpu_run.py)
# Only these, without dependencies: the device image already has numpy, anyio, h11, click, httpx, typing-extensions
# (KINDS.md), and a wheel of one of those would replace the image's own.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
names="fastapi starlette pydantic pydantic-core pydantic-settings python-dotenv typing-inspection annotated-types
uvicorn python-multipart websockets pycocotools"
# the versions this checkout's own environment runs (and tests) where it has them
pins=$("$py" - $names <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version
for name in sys.argv[1:]:
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        print(name)
PY
)
# shellcheck disable=SC2086
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d .whl $pins 2> >(grep -v "is ignored" >&2)
du -sh .whl
