#!/usr/bin/env bash
# Creates target/pyenv, a Python virtual environment with the official OpenAI client, which
# the server tests (tests/server.rs → tests/server/*.py) drive ferrite with. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=target/pyenv
OPENAI_VERSION=1.109.1
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import openai, sys; sys.exit(openai.__version__ != '$OPENAI_VERSION')" 2>/dev/null; then
  exit 0
fi
if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c "import ensurepip" 2>/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq python3-venv
fi
mkdir -p target
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check "openai==$OPENAI_VERSION"
"$VENV/bin/python" -c "import openai; print('py-env: openai', openai.__version__)"
