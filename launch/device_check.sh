#!/usr/bin/env bash
# The one prepared accelerator check: every figure a GPU or TPU run should give.
#   bash launch/device_check.sh [OUT_DIR [--deadline_s=S --step_timeout_s=T --only=...]]
#   bash launch/device_check.sh OUT_DIR --lncrnapy DIR [--lncrnapy_python PY]   # beside lncRNA-Py
# --lncrnapy: lncRNA-Py's checkout (the folder that holds lncrnapy/); --lncrnapy_python: the
# Python that has torch and lncRNA-Py's requirements (default: the one that runs the check).
# Hardware: one GPU or TPU (BERT-base sizes), or any CPU (tiny sizes: the same steps, so
# the check never rots).
# Expect: one JSON line per result on stdout as each step ends (also appended to
# OUT_DIR/device_check.jsonl, OUT_DIR defaulting to $OUT or device_check), then a
# "summary" line; exit status 0 when no step failed. About 1 minute on 2 CPU cores; the
# steps are budgeted to end within 8 minutes on one H100. nlm_jax/device_check.py says
# what each step measures.
set -uo pipefail
# Paths given relative to the caller's folder stay so after the cd below.
# (A Python given by its name alone, e.g. python3, is looked up on the PATH.)
args=()
folder() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
program() { case "$1" in /*|"") echo "$1" ;; */*) echo "$PWD/$1" ;; *) echo "$1" ;; esac; }
while [ $# -gt 0 ]; do
  case "$1" in
    --lncrnapy) args+=("--lncrnapy=$(folder "${2-}")"); shift; [ $# -gt 0 ] && shift ;;
    --lncrnapy=*) args+=("--lncrnapy=$(folder "${1#*=}")"); shift ;;
    --lncrnapy_python) args+=("--lncrnapy_python=$(program "${2-}")"); shift; [ $# -gt 0 ] && shift ;;
    --lncrnapy_python=*) args+=("--lncrnapy_python=$(program "${1#*=}")"); shift ;;
    *) args+=("$1"); shift ;;
  esac
done
set -- "${args[@]+"${args[@]}"}"
cd "$(dirname "$0")/.."
python=python3
[ -x .venv/bin/python ] && python=.venv/bin/python
out_dir=${1:-${OUT:-device_check}}
mkdir -p "$out_dir" || exit 2
export PYTHONUNBUFFERED=1
# The largest batch and the longest context: most of the GPU's memory for JAX (default 75%).
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
# Steps start `python -m nlm_jax...` from temporary folders: the package from this clone.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv >&2
fi
exec "$python" -m nlm_jax.device_check --out="$out_dir/device_check.jsonl" "${@:2}"
