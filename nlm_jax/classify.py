r"""Classifies every record of a FASTA file as pcRNA or ncRNA with a fine-tuned model; given
a labelled pair (protein-coding, then non-coding), also scores the classification.

  python -m nlm_jax.classify MODEL_DIR FASTA OUT.csv [--long_sequences windows|truncate|lncrnapy]
      [--batch_size 64] [--precision auto] [--overwrite] [--context_length N] [--bpe_file F]
  python -m nlm_jax.classify MODEL_DIR PC.fasta NC.fasta OUT.csv [...]

MODEL_DIR is a fine-tuning folder (model_dir/exp_name of nlm_jax.finetune; its best
checkpoint), its export, or a Classifier folder of lncRNA-Py's save_pretrained (such as
its published lncRNA-BERT-kmer-k3-finetuned), or its Hugging Face hub id
(luukromeijn/lncRNA-BERT-kmer-k3-finetuned). OUT.csv has one row per record, in file
order (with a pair: PC.fasta's records, then NC.fasta's):
  id        the record's name
  P(pcRNA)  the probability that it is protein-coding
  class     pcRNA where P(pcRNA) >= 0.5, else ncRNA (lncRNA-Py's rule)
A sequence longer than the context is classified over all its windows (their logits
averaged, weighted by their real positions), over the first one with
--long_sequences truncate, or as lncRNA-Py's classify does with --long_sequences lncrnapy
(conv: the last window, the 3' end; tokens: the first). Records are streamed, rows written as they come to a
temporary file renamed when complete, by one command at a time (outputs.py); an existing
OUT is refused unless --overwrite and classify wrote it; OUT inside a model or export
folder is refused; a missing folder of OUT is made.

With a pair, the scores of lncRNA-Py's metrics (scores.py: F1 (macro), accuracy, precision
and recall of each class, the confusion matrix, ROC AUC) are printed and saved as JSON
beside OUT (OUT.csv -> OUT.scores.json, under the same rules).
"""

from __future__ import annotations

import csv
import time
import json
from typing import Iterator, Sequence

import numpy as np
from absl import flags

from nlm_jax import allocator
from nlm_jax import cli
from nlm_jax import config
from nlm_jax import fasta as fasta_lib
from nlm_jax import filecache
from nlm_jax import outputs
from nlm_jax import scores as scores_lib
from nlm_jax.config import UserError

HEADER = ("id", "P(pcRNA)", "class")
# --help: the flags of lncRNA-Py's classify script first.
HELP_GROUPS = {"architecture": ("context_length", "bpe_file"), "classification": ("batch_size",)}


def check_output(out: str, overwrite: bool) -> None:
  """OUT must be a new .csv, or with --overwrite one that classify wrote, outside any
  model or export folder."""
  outputs.check_file(out, overwrite, ".csv", "classify", _is_classification_file)


def _is_classification_file(path: str) -> bool:
  try:
    with open(path, newline="") as f:
      return next(csv.reader(f), None) == list(HEADER)
  except (OSError, UnicodeDecodeError):
    return False


def scores_path(out: str) -> str:
  """Where the scores of a labelled pair go: OUT.csv -> OUT.scores.json."""
  return out.removesuffix(".csv") + ".scores.json"


def _is_scores_file(path: str) -> bool:
  try:
    with open(path) as f:
      return "F1 (macro)" in json.load(f)
  except (OSError, ValueError):
    return False


def classify_fasta(model_dir: str, fasta_path: str | Sequence[str], out: str,
                   long_sequences: str = "windows", batch_size: int = 64, precision: str = "auto",
                   overwrite: bool = False, context_length: int | None = None,
                   bpe_file: str = "") -> np.ndarray:
  """Writes `out` (see the module docstring) from the records of `fasta_path`, one FASTA
  file or several in turn; returns P(pcRNA) of every record, in OUT's order."""
  paths = [fasta_path] if isinstance(fasta_path, str) else list(fasta_path)
  check_output(out, overwrite)
  lengths = np.concatenate([_input(path).lengths for path in paths])
  cli.start_jax()
  from nlm_jax import pretrained

  model = pretrained.load(model_dir, precision=precision, batch_size=batch_size,
                          bpe_file=bpe_file, context_length=context_length)
  if not model.cfg.is_classifier:
    raise UserError(f"{model_dir!r} holds a pre-trained (masked language) model, not a "
                    "classifier: fine-tune it first with python -m nlm_jax.finetune.")
  print(f"classifying {len(lengths):,} records ({int(lengths.sum()):,} nt) of {' and '.join(paths)} "
        f"with the model in {model_dir} (context {model.cfg.context_length}, "
        f"{model.cfg.precision}, {model.mesh.devices.size} device(s))", flush=True)
  names: list[str] = []

  def sequences() -> Iterator[str]:
    for path in paths:
      for name, seq in fasta_lib.records(path, "input"):
        fasta_lib.check_letters(seq, f"record {name!r} of {path!r}")
        names.append(name)
        yield seq

  progress = cli.Progress(int(lengths.sum()), len(lengths))
  done, p_N = 0, np.zeros(len(lengths), np.float32)
  with outputs.writing(out, lambda: check_output(out, overwrite)) as tmp, open(tmp, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(HEADER)
    for probs in model.classify_stream(sequences(), long_sequences):
      for name, p in zip(names[done:done + len(probs)], probs, strict=True):
        writer.writerow((name, f"{p:.6f}", "pcRNA" if p >= 0.5 else "ncRNA"))
      p_N[done:done + len(probs)] = probs
      done += len(probs)
      progress.update(int(lengths[:done].sum()), done)
    progress.close()
  return p_N


def _input(path: str) -> fasta_lib.Fasta:
  fa = fasta_lib.Fasta(path, "input", random_access=False)  # validates; lengths
  fasta_lib.check_alphabet(fa, "input")
  return fa


def classify_pair(model_dir: str, pc_path: str, nc_path: str, out: str, overwrite: bool = False,
                  **options) -> dict:
  """classify_fasta over a labelled pair (pcRNA file, ncRNA file) into `out`, and the scores
  of lncRNA-Py's metrics (scores.py), also written to scores_path(out); returns them."""
  scores_out = scores_path(out)
  check_scores = lambda: outputs.check_file(scores_out, overwrite, ".json", "classify",
                                            _is_scores_file)
  check_scores()  # before anything is classified
  n_pc = len(_input(pc_path).lengths)
  p_N = classify_fasta(model_dir, (pc_path, nc_path), out, overwrite=overwrite, **options)
  scores = scores_lib.classification_scores(np.arange(len(p_N)) < n_pc, p_N)
  with outputs.writing(scores_out, check_scores) as tmp, open(tmp, "w") as f:
    json.dump({"pcRNA": pc_path, "ncRNA": nc_path, **scores}, f, indent=2)
  return scores


def main(argv: list[str]) -> None:
  if len(argv) not in (4, 5):
    raise UserError(f"expected MODEL_DIR, FASTA and OUT (or MODEL_DIR, PC.fasta, NC.fasta and "
                    f"OUT), got {len(argv) - 1} argument(s). Usage: python -m nlm_jax.classify "
                    "MODEL_DIR FASTA OUT.csv")
  start = time.perf_counter()
  f = flags.FLAGS
  filecache.use_folder(f.fasta_index)
  options = dict(long_sequences=f.long_sequences, batch_size=f.batch_size, precision=f.precision,
                 context_length=f.context_length, bpe_file=f.bpe_file)
  if len(argv) == 5:
    scores = classify_pair(*argv[1:5], overwrite=f.overwrite, **options)
    n = sum(map(sum, scores["Confusion matrix"]))
    print(f"scores of {argv[2]} (pcRNA) and {argv[3]} (ncRNA), pcRNA where P(pcRNA) >= 0.5:\n"
          f"{scores_lib.describe(scores)}")
    print(f"wrote {argv[4]} and {scores_path(argv[4])}: {n:,} records classified in "
          f"{time.perf_counter() - start:.1f} s")
    return
  n = len(classify_fasta(argv[1], argv[2], argv[3], overwrite=f.overwrite, **options))
  print(f"wrote {argv[3]}: {n:,} records classified in {time.perf_counter() - start:.1f} s")


def define_flags() -> None:
  """The command's flags; defined only when it runs, so that the module imports beside
  nlm_jax.embed (whose flags share these names)."""
  flags.DEFINE_enum("long_sequences", "windows", ["windows", "truncate", "lncrnapy"],
                    "Sequences longer than the context: classify over all their windows "
                    "(logits averaged, weighted by real positions), the first one (truncate), "
                    "or as lncRNA-Py does (lncrnapy: conv the last window, the 3' end; tokens "
                    "the first).")
  flags.DEFINE_integer("batch_size", 64, "Rows per device step.", lower_bound=1)
  flags.DEFINE_enum("precision", "auto", ["auto", "fp32", "bf16"],
                    "auto: bf16 on GPU/TPU, fp32 on CPU.")
  flags.DEFINE_bool("overwrite", False, "Replace OUT if it is a CSV that classify wrote.")
  flags.DEFINE_integer("context_length", None, "Positions of a window, CLS included (default: "
                       "the model's; 768 for lncRNA-Py's folders, which do not store it).",
                       lower_bound=2)
  flags.DEFINE_string("bpe_file", "", "The .bpe file of a lncRNA-Py BPE model (nlm_jax's "
                      "folders hold their own).")
  flags.DEFINE_string("fasta_index", None, config.FASTA_INDEX_HELP)


if __name__ == "__main__":
  allocator.preload()  # re-executes this command with mimalloc, before JAX loads
  cli.exit_without_collecting()
  define_flags()
  cli.run(main, "nlm_jax.classify", memory_flags="--batch_size", groups=HELP_GROUPS)
