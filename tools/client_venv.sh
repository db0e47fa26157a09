#!/usr/bin/env bash
# The Python clients the server tests talk to chat_web with (tests/serve_clients.rs): `requests` and the
# official `openai` package, installed from PyPI into a virtual environment (.venv-clients, or $1).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-clients}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -c "import requests, openai" 2>/dev/null ||
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "requests==2.34.2" "openai==3.60.0"
"$VENV/bin/python" -c "import requests, openai; print('clients: requests', requests.__version__, 'openai', openai.__version__)"
