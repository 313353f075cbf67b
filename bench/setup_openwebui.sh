#!/usr/bin/env bash
# Make the venv the open-webui baseline of bench/redis_lifecycle.py runs in.
#
#   bash bench/setup_openwebui.sh            (creates .bench-venv/openwebui)
#   OPENWEBUI_VENV=/some/dir bash bench/setup_openwebui.sh
#
# open-webui 0.12.4 is installed without its dependencies (hundreds of packages: ML
# libraries, databases, ...); then only what `import open_webui.tasks` needs: the
# package's __init__ (typer, uvicorn), open_webui.env (markdown, bs4, cryptography),
# open_webui.utils.json_codec (engineio, orjson), open_webui.utils.misc (aiohttp,
# mimeparse) and redis + hiredis. Versions are the ones open-webui 0.12.4 pins, where
# it pins them (typer and python-engineio it does not: these are the versions that
# resolved when this script was written). open-webui needs Python 3.11 or 3.12.
# pip then reports open-webui's other requirements as missing: that is expected.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${OPENWEBUI_VENV:-$here/.bench-venv/openwebui}"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    for candidate in python3.11 python3.12 python3; do
        if command -v "$candidate" >/dev/null &&
            "$candidate" -c 'import sys; sys.exit(not (3, 11) <= sys.version_info < (3, 13))'; then
            python="$candidate"
            break
        fi
    done
fi
if [[ -z "$python" ]]; then
    echo "setup_openwebui.sh: open-webui 0.12.4 needs Python 3.11 or 3.12; set PYTHON=" >&2
    exit 1
fi

if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps open-webui==0.12.4
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    redis==8.0.1 hiredis==3.4.2 \
    typer==0.29.2 pydantic==2.13.4 uvicorn==0.54.0 \
    markdown==3.10.2 beautifulsoup4==4.14.3 cryptography==48.0.1 \
    python-engineio==4.15.1 orjson==3.11.9 \
    aiohttp==3.14.5 python-mimeparse==2.0.0

WEBUI_SECRET_KEY=bench-setup-check "$venv/bin/python" - <<'EOF'
import contextlib, sys
with contextlib.redirect_stdout(sys.stderr):
    import open_webui.tasks as tasks
print(f"ok: {tasks.__file__}")
EOF
