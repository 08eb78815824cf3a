#!/usr/bin/env bash
# Sets up and starts one nlm_jax pre-training run on every worker of a Cloud TPU VM (a
# single host or a multi-host slice), all workers at once.
#
# Usage, from the repository root of a machine with the gcloud CLI:
#   gcloud compute tpus tpu-vm scp --recurse . TPU_NAME:~/nlm_jax --zone ZONE --worker=all
#   bash launch/tpu_vm.sh TPU_NAME ZONE TRAIN.fasta VALID.fasta [extra pretrain flags...]
# for example
#   bash launch/tpu_vm.sh my-v4-16 us-central2-b /mnt/data/train.fasta /mnt/data/valid.fasta \
#     --model_dir=/mnt/bucket/models --results_dir=/mnt/bucket/results --epochs=100
#
# On every worker it
#   1. goes to ~/nlm_jax, the copy the scp above made (the same path on every worker);
#   2. makes ~/nlm_jax/.venv-tpu with Python 3.11 or newer (apt installs python3.11 where
#      there is none) and runs pip install -r requirements.txt -e ".[tpu]" (the jax[tpu]
#      extra of pyproject.toml, at the jax version that requirements.txt pins);
#   3. starts, under nohup, python -m nlm_jax.pretrain TRAIN VALID
#      --flagfile=launch/conv.flags --distributed [extra flags], logging to
#      ~/nlm_jax/logs/pretrain-<UTC time>-<host>.log, checks it is still alive a few
#      seconds later, and returns. Extra flags override the flagfile's.
# jax.distributed.initialize() finds the coordinator, the number of processes and this
# worker's index on a TPU VM by itself: --coordinator_address, --num_processes and
# --process_id are not needed here.
#
# Things to know:
# - TRAIN.fasta and VALID.fasta must exist at the same path on every worker (a bucket
#   mounted with gcsfuse, or a copy on each worker): each worker reads its own rows of
#   every batch from them. Relative paths are relative to ~/nlm_jax.
# - --batch_size is global, over all TPU chips of the slice, and must be a multiple of
#   their number: launch/conv.flags says 8, so a v4-32 (16 chips) needs e.g.
#   --batch_size=16 or 32. The batch size is part of the experiment name (_bsN).
# - --model_dir must be a folder every worker sees (a gcsfuse mount, NFS, Filestore):
#   orbax writes each checkpoint from all workers together. gs:// URLs do not work as
#   paths here. history.csv and the plots are written by worker 0 alone (--results_dir,
#   by default ~/nlm_jax on worker 0).
# - The scp above copies everything, a local .venv included (the TPU venv is .venv-tpu,
#   so it does no harm, but it is slow): copy a fresh `git clone` of the repository
#   instead. A second scp of `.` onto an existing ~/nlm_jax nests the copy; remove
#   ~/nlm_jax on the workers first.
# - Environment: FLAGFILE=launch/kmer.flags picks another flagfile, PYTHON=python3.12 the
#   interpreter, PROJECT=my-project the gcloud project (default: gcloud's).
# - Follow: gcloud compute tpus tpu-vm ssh TPU_NAME --zone ZONE --worker=0 \
#             --command 'tail -f ~/nlm_jax/logs/pretrain-*.log'
#   Stop:   gcloud compute tpus tpu-vm ssh TPU_NAME --zone ZONE --worker=all \
#             --command 'pkill -f "python -m nlm_jax.pretrain"'
#   Running the same command again resumes from the checkpoint in model_dir/EXP_NAME.
#
# This script has not been run by the test suite: the machines that run it have neither
# gcloud nor a TPU. It is checked with `bash -n launch/tpu_vm.sh` only.

set -euo pipefail

if [[ $# -lt 4 ]]; then
  sed -n '6,7p' "$0" | sed 's/^#   /usage: /' >&2
  exit 2
fi
TPU_NAME=$1 ZONE=$2 TRAIN=$3 VALID=$4
shift 4
FLAGFILE=${FLAGFILE:-launch/conv.flags}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if [[ ! -f $REPO/$FLAGFILE ]]; then
  echo "tpu_vm.sh: no flagfile $FLAGFILE in $REPO (set FLAGFILE=launch/....flags)" >&2
  exit 1
fi

# The values the workers need, quoted for bash, then the script they run.
ARGS=$(printf ' %q' "$TRAIN" "$VALID" "--flagfile=$FLAGFILE" --distributed "$@")
PRELUDE="PYTHON=$(printf %q "${PYTHON:-}")
STAMP=$(date -u +%Y%m%d-%H%M%S)
ARGS=($ARGS)"

read -r -d '' WORKER <<'EOF' || true
set -euo pipefail
host=$(hostname)
cd "$HOME/nlm_jax" 2>/dev/null || {
  echo "$host: no ~/nlm_jax: copy the repository first (gcloud compute tpus tpu-vm scp" \
       "--recurse . TPU_NAME:~/nlm_jax --zone ZONE --worker=all)" >&2
  exit 1
}
if running=$(pgrep -af "python -m nlm_jax.pretrain"); then
  echo "$host: a run is going on already (stop it first):" >&2
  echo "$running" >&2
  exit 1
fi

# Python 3.11 or newer (nlm_jax and this jax need it).
python=""
for p in $PYTHON python3.13 python3.12 python3.11 python3; do
  if command -v "$p" >/dev/null &&
     "$p" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    python=$p
    break
  fi
done
if [[ -z $python ]]; then
  sudo apt-get update -qq
  sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3.11 python3.11-venv
  python=python3.11
fi
if [[ ! -x .venv-tpu/bin/python ]]; then
  if ! "$python" -m venv .venv-tpu; then  # Ubuntu keeps ensurepip in pythonX.Y-venv
    rm -rf .venv-tpu
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$(basename "$python")-venv"
    "$python" -m venv .venv-tpu
  fi
fi
.venv-tpu/bin/python -m pip install -q --upgrade pip
# jax[tpu] pulls in the libtpu that matches this jax version (from PyPI).
.venv-tpu/bin/python -m pip install -q -r requirements.txt -e ".[tpu]"

mkdir -p logs
log=logs/pretrain-$STAMP-$host.log
setsid nohup .venv-tpu/bin/python -m nlm_jax.pretrain "${ARGS[@]}" >"$log" 2>&1 </dev/null &
pid=$!
sleep 10
if ! kill -0 "$pid" 2>/dev/null; then
  echo "$host: pretrain stopped at once; the end of ~/nlm_jax/$log:" >&2
  tail -n 20 "$log" >&2
  exit 1
fi
echo "$host: pretrain running, pid $pid, log ~/nlm_jax/$log"
EOF

# Sent base64-encoded: no quoting can go wrong between here, ssh and the worker's shell.
ENCODED=$(printf '%s\n%s\n' "$PRELUDE" "$WORKER" | base64 | tr -d '\n')
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" ${PROJECT:+--project "$PROJECT"} \
  --worker=all --command "echo $ENCODED | base64 -d | bash"
