#!/usr/bin/env bash
# The one prepared accelerator check: every figure a GPU or TPU run should give.
#   bash launch/device_check.sh [OUT_DIR [--deadline_s=S --step_timeout_s=T --only=...]]
# Hardware: one GPU or TPU (BERT-base sizes), or any CPU (tiny sizes: the same steps, so
# the check never rots).
# Expect: one JSON line per result on stdout as each step ends (also appended to
# OUT_DIR/device_check.jsonl, OUT_DIR defaulting to $OUT or device_check), then a
# "summary" line; exit status 0 when no step failed. About 1 minute on 2 CPU cores; the
# steps are budgeted to end within 8 minutes on one H100. nlm_jax/device_check.py says
# what each step measures.
set -uo pipefail
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
