#!/usr/bin/env bash
# Does pre-training help? Fine-tunes the demo's classes twice, side by side: from the
# pre-trained demo model, and from scratch with the same architecture, steps, data and
# seed (launch/finetune_demo.flags for both). Prints the best F1 (macro)|valid of each.
#
# Usage, from the repository root, after the demo's pre-training (the README's demo):
#   bash launch/finetune_compare.sh [extra finetune flags, e.g. --epochs=10]
# Hardware: any CPU.
# Expect: about half a minute (30 s for both on 2 shared CPU cores at commit 9839aed); best
#   F1 (macro)|valid 0.9733 from the pre-trained model, 0.9033 from scratch (10 epochs,
#   630 steps each).
set -euo pipefail
python="${PYTHON:-.venv/bin/python}"
model=models/DEMO_conv_nm64_sm9_dm64_N2_h4_bs16_ws300_cl64_d0
data=(demo_data/pc_train.fasta demo_data/nc_train.fasta demo_data/pc_valid.fasta
      demo_data/nc_valid.fasta)
"$python" -m nlm_jax.finetune "${data[@]}" --flagfile=launch/finetune_demo.flags \
    --pretrained_model="$model" --exp_prefix=DEMO_CMP_PRE --fresh "$@"
# The pre-trained model's architecture, given as flags.
"$python" -m nlm_jax.finetune "${data[@]}" --flagfile=launch/finetune_demo.flags \
    --d_model=64 --N=2 --h=4 --n_kernels=64 --kernel_size=9 \
    --exp_prefix=DEMO_CMP_SCRATCH --fresh "$@"
for prefix in DEMO_CMP_PRE DEMO_CMP_SCRATCH; do
  "$python" - "$prefix" <<'PY'
import glob, sys
from nlm_jax import history
[path] = glob.glob(f"results/{sys.argv[1]}_*/history.csv")
rows = history.read_csv(path)
best = max(rows, key=lambda r: r["F1 (macro)|valid"])
print(f"{sys.argv[1]}: best F1 (macro)|valid {best['F1 (macro)|valid']:.4f} (epoch "
      f"{rows.index(best) + 1} of {len(rows)}); after epoch 1: {rows[0]['F1 (macro)|valid']:.4f}")
PY
done
