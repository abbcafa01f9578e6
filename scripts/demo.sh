#!/usr/bin/env bash
# The main job on a fresh Linux machine (CPU is enough): install, write the tiny random-weight demo
# model set, run the example workflow headless, print the MP4's path. Random weights give noise.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -r requirements.txt
python3 -m pip install -q --no-deps -e .
python3 -m wanfp4 demo-models demo_models
python3 -m wanfp4 run example_workflows/api/infinitetalk_fp4.json --models demo_models --output output
