#!/usr/bin/env bash
# The one test command (README): install CPU torch + the pack + test needs, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -r requirements.txt -r requirements-dev.txt
python3 -m pip install -q --no-deps -e .
python3 -m pytest tests -q -p no:cacheprovider
