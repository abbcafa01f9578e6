# Source on the GPU machine from the repo root: installs carried wheels (diffusers, av, pyloudnorm,
# importlib_metadata in .whl/, see bench/RESULTS.md) into /tmp/site and makes the checkout importable
# as `wanfp4` without installing it. The wheels were fetched on the dev machine with
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
#     --platform manylinux_2_17_x86_64 -d .whl diffusers==0.42.1 av==18.1.0 pyloudnorm==0.2.0 importlib_metadata
# and carried with the working tree (.whl/ is git-ignored locally).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
mkdir -p /tmp/p && ln -sfn "$PWD" /tmp/p/wanfp4
export PYTHONPATH=/tmp/p:/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, triton, transformers, diffusers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'transformers', transformers.__version__, 'diffusers', diffusers.__version__)"
