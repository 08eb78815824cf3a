r"""Synthetic transcripts with planted motifs: the embedded demo data set.

  python -m nlm_jax.synthetic demo_data   # writes demo_data/{train,valid}.fasta and the
                                          # classes {pc,nc}_{train,valid}.fasta

Each sequence alternates random background with copies of a few fixed motifs, so a
masked nucleotide inside a motif can be predicted from its neighbours: a model that
learns scores clearly above the 0.25 of chance; one that does not, stays there.

The two classes of the fine-tuning demo are made the same way from disjoint halves of
the motifs ("pcRNA": motifs 0-5, "ncRNA": motifs 6-11): a pre-trained model has seen
every motif, a model from scratch must discover them from the labels alone.
"""

from __future__ import annotations

import os
import sys

import numpy as np
from absl import app
from absl import flags

_N_TRAIN = flags.DEFINE_integer("n_train", 3000, "Training sequences.")
_N_VALID = flags.DEFINE_integer("n_valid", 500, "Validation sequences.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the generator.")


def sequences(n: int, rng: np.random.Generator, n_motifs: int = 12, min_len: int = 150,
              max_len: int = 900, motif_share: float = 0.6, motif_seed: int = 1234,
              use: tuple[int, int] | None = None) -> list[str]:
  """n sequences; the motifs depend on motif_seed only, so train and valid share them.
  `use` (first, stop) restricts the motifs planted to a range of them."""
  motif_rng = np.random.default_rng(motif_seed)
  motifs = [motif_rng.integers(0, 4, motif_rng.integers(10, 25)) for _ in range(n_motifs)]
  if use is not None:
    motifs = motifs[use[0]:use[1]]
    n_motifs = len(motifs)
  mean_motif = np.mean([len(m) for m in motifs])
  # Background runs are geometric with the mean that gives motif_share of the sequence.
  p_background_end = 1.0 / (mean_motif * (1 - motif_share) / motif_share)
  out = []
  for _ in range(n):
    length = int(rng.integers(min_len, max_len + 1))
    parts, total = [], 0
    while total < length:
      run = rng.integers(0, 4, rng.geometric(p_background_end))
      motif = motifs[rng.integers(n_motifs)]
      parts += [run, motif]
      total += len(run) + len(motif)
    out.append("".join("ACGT"[c] for c in np.concatenate(parts)[:length]))
  return out


def write_fasta(path: str, seqs: list[str], prefix: str) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    for i, s in enumerate(seqs):
      f.write(f">{prefix}_{i}\n")
      for j in range(0, len(s), 60):
        f.write(s[j:j + 60] + "\n")
  os.replace(tmp, path)


# Records of the fine-tuning demo's class files: (pc, nc) for train and for valid.
CLASS_COUNTS = {"train": (600, 400), "valid": (150, 150)}
CLASS_MOTIFS = {"pc": (0, 6), "nc": (6, 12)}
CLASS_SHARE = 0.3  # of each class sequence in motifs: a fainter signal than pre-training's


def write_demo(folder: str, n_train: int = 3000, n_valid: int = 500, seed: int = 0) -> tuple[str, str]:
  """train.fasta and valid.fasta for pre-training, and {pc,nc}_{train,valid}.fasta for
  fine-tuning (drawn after them, from their own generator)."""
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(seed)
  paths = os.path.join(folder, "train.fasta"), os.path.join(folder, "valid.fasta")
  write_fasta(paths[0], sequences(n_train, rng), "train")
  write_fasta(paths[1], sequences(n_valid, rng), "valid")
  class_rng = np.random.default_rng([seed, 1])
  for split, counts in CLASS_COUNTS.items():
    for (label, use), n in zip(CLASS_MOTIFS.items(), counts):
      write_fasta(os.path.join(folder, f"{label}_{split}.fasta"),
                  sequences(n, class_rng, motif_share=CLASS_SHARE, use=use), f"{label}_{split}")
  return paths


def main(argv: list[str]) -> None:
  if len(argv) != 2:
    print("nlm_jax.synthetic: error: expected one output folder: python -m nlm_jax.synthetic "
          "demo_data", file=sys.stderr)
    sys.exit(2)
  try:
    train, valid = write_demo(argv[1], _N_TRAIN.value, _N_VALID.value, _SEED.value)
  except OSError as e:
    print(f"nlm_jax.synthetic: error: cannot write to {argv[1]!r} ({e.strerror}): choose a "
          "writable folder.", file=sys.stderr)
    sys.exit(2)
  print(f"wrote {train} ({_N_TRAIN.value} sequences) and {valid} ({_N_VALID.value} sequences), "
        "and the classes of the fine-tuning demo: "
        + ", ".join(f"{label}_{split}.fasta ({n})" for split, counts in CLASS_COUNTS.items()
                    for label, n in zip(CLASS_MOTIFS, counts)))


if __name__ == "__main__":
  from nlm_jax import cli

  app.run(main, flags_parser=cli.flags_parser("nlm_jax.synthetic", {"data": ("n_train", "n_valid", "seed")}))
