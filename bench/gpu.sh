#!/usr/bin/env bash
# The GPU checks behind BENCHMARKS.md's "One GPU" section, in one go:
#   1. lticl installed in a fresh virtual environment;
#   2. the tests of the forms, the kernel, training, resume and the smoke reproduction
#      (tests/test_{model,kernel,train,runs,reproduce}.py, slow ones included), in the
#      background from here on;
#   3. one 7-layer group of Table 1 at the gpu budget (bench/gpu-group.toml), timed,
#      with the GPU's load sampled each second;
#   4. bench/train.py, 20 models per compiled call (a group's size at the gpu budget).
# What it prints and the files it reports go to OUTDIR.
#
#     bench/gpu.sh OUTDIR [PYTEST ARGUMENTS]   (in place of step 2's selection)
#
# A machine without a network: the virtual environment reaches the JAX, CUDA plugin and
# libraries already installed there through a .pth file, and lticl goes in with
# --no-deps; its build's setuptools (>= 77) comes from .whl/, downloaded beforehand:
# `pip download --no-deps -d .whl "setuptools>=77"`. Steps 2 and 3 overlap, so the
# group's time is an upper bound.
set -u
out=$(realpath -m "${1:?usage: bench/gpu.sh OUTDIR [PYTEST ARGUMENTS]}")
shift
mkdir -p "$out"
[ $# -gt 0 ] || set -- tests/test_model.py tests/test_kernel.py tests/test_train.py tests/test_runs.py \
    tests/test_reproduce.py -k "not ray"
work=$(mktemp -d)
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false  # several processes share the GPU
stamp() { echo "== $(date -u +%T) $*"; }

stamp "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import sys, jax, optax; print("python", sys.version.split()[0], "jax", jax.__version__, "optax", optax.__version__, jax.devices())'

stamp "install: a fresh virtual environment, lticl with --no-deps"
python3 -m venv --without-pip "$work/venv" || exit  # pip, too, comes from the image
image=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
venv=$("$work/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$image" > "$venv/image-packages.pth"
export PATH="$work/venv/bin:$PATH"
python -m pip install -q --no-deps --no-index --find-links .whl -e . || exit
python -c 'import lticl, shutil, sys; print("lticl from", lticl.__file__, "python", sys.executable, "command", shutil.which("lticl"))'

stamp "tests, in the background"
( timeout 470 python -m pytest -p no:cacheprovider -n 6 -q --durations=15 "$@" > "$out/pytest.log" 2>&1
  echo "pytest exit $?" >> "$out/pytest.log" ) &
tests=$!

stamp "group: lticl sweep bench/gpu-group.toml"
nvidia-smi dmon -s um -d 1 > "$out/dmon.log" 2>&1 &
dmon=$!
start=$(date +%s)
timeout 290 lticl sweep bench/gpu-group.toml --out "$work/group"
echo "sweep exit $? after $(( $(date +%s) - start )) s"
kill "$dmon"
cp "$work/group/results.md" "$work/group/results.csv" "$work/group/log.jsonl" "$out/" 2>/dev/null
config=$(ls "$work"/group/runs/*/config.json 2>/dev/null | head -1)
[ -n "$config" ] && python -c 'import json, sys; print(json.dumps(json.load(open(sys.argv[1]))["environment"]))' "$config"

stamp "bench/train.py"
timeout 150 python bench/train.py --steps 20 --layers 1,7 --batches 2048 --models 20 2>&1 | tee "$out/bench-train.md"

stamp "waiting for the tests"
wait "$tests"
tail -25 "$out/pytest.log"
stamp "done"
