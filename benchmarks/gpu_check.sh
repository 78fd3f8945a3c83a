#!/usr/bin/env bash
# The GPU check on a lent device machine, in one call (see benchmarks/gpu_check.py for the `run` call and
# how to fill .wheels/): installs the project's dependencies the bare machine lacks from the carried wheels
# (nothing is fetched: it has no internet), runs the check, then the gpu-marked tests while time is left.
# Results go to $OUT (the device tool brings them back), else to benchmarks/out/.
# Usage: bash benchmarks/gpu_check.sh [gpu_check.py options, e.g. --nodes 500000]
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/out}"
mkdir -p "$out"
site=/tmp/oocgnn-site
if compgen -G ".wheels/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .wheels/*.whl \
        || { echo "gpu_check.sh: installing .wheels/ failed" >&2; exit 3; }
fi
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OUTDATED_IGNORE=1
python3 - <<'PY' 2>&1 | tee "$out/gpu_check_env.txt"
import importlib, torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "gpus", torch.cuda.device_count())
for m in ("numpy", "numba", "zarr", "numcodecs", "pymetis", "torch_geometric", "psutil", "tqdm"):
    try:
        print(m, importlib.import_module(m).__version__)
    except Exception as exc:
        print(m, "MISSING", exc)
PY
start=$SECONDS
timeout 300 python3 benchmarks/gpu_check.py --out "$out/gpu_check.json" "$@" 2>&1 | tee "$out/gpu_check.log"
status=${PIPESTATUS[0]}
if (( SECONDS - start < 270 )); then  # the gpu-marked tests, in what is left of the call (330 s in all)
    timeout $(( 330 - (SECONDS - start) )) python3 -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider \
        2>&1 | tee "$out/gpu_tests.log"
fi
exit "$status"
