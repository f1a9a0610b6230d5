#!/usr/bin/env bash
# Set up a virtual environment in .venv.
#   scripts/setup.sh          everything the tests need (Debian packages from .ci/apt.txt, all extras)
#   scripts/setup.sh serve    only what the service needs
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-test}

if [ "$mode" = test ]; then
  pkgs=$(grep -v '^#' .ci/apt.txt | tr '\n' ' ')
  if [ -n "${pkgs// }" ]; then
    sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
  fi
  extras="train,synth,label,dev"
else
  extras=""
fi

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch is pinned in the same command: a looser requirement would pull several GB of CUDA wheels.
.venv/bin/python -m pip install -q torch==2.13.0 -e ".${extras:+[$extras]}"
if [ "$mode" = test ]; then
  # The Anny body model builds an ~800 MB cache on first use (about a minute); do it here, not in a test.
  .venv/bin/python -c "import anny; anny.Anny()" >/dev/null
fi
