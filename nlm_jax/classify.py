r"""Classifies every record of a FASTA file as pcRNA or ncRNA with a fine-tuned model.

  python -m nlm_jax.classify MODEL_DIR FASTA OUT.csv [--long_sequences windows|truncate|lncrnapy]
      [--batch_size 64] [--precision auto] [--overwrite] [--context_length N] [--bpe_file F]

MODEL_DIR is a fine-tuning folder (model_dir/exp_name of nlm_jax.finetune; its best
checkpoint), its export, or a Classifier folder of lncRNA-Py's save_pretrained (such as
its published lncRNA-BERT-kmer-k3-finetuned). OUT.csv has one row per record, in file order:
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
"""

from __future__ import annotations

import csv
import time
from typing import Iterator

from absl import flags

from nlm_jax import allocator
from nlm_jax import cli
from nlm_jax import config
from nlm_jax import fasta as fasta_lib
from nlm_jax import filecache
from nlm_jax import outputs
from nlm_jax.config import UserError

HEADER = ("id", "P(pcRNA)", "class")


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


def classify_fasta(model_dir: str, fasta_path: str, out: str, long_sequences: str = "windows",
                   batch_size: int = 64, precision: str = "auto", overwrite: bool = False,
                   context_length: int | None = None, bpe_file: str = "") -> int:
  """Writes `out` (see the module docstring); returns the number of records."""
  check_output(out, overwrite)
  fa = fasta_lib.Fasta(fasta_path, "input", random_access=False)  # validates; lengths
  fasta_lib.check_alphabet(fa, "input")
  lengths = fa.lengths
  cli.start_jax()
  from nlm_jax import pretrained

  model = pretrained.load(model_dir, precision=precision, batch_size=batch_size,
                          bpe_file=bpe_file, context_length=context_length)
  if not model.cfg.is_classifier:
    raise UserError(f"{model_dir!r} holds a pre-trained (masked language) model, not a "
                    "classifier: fine-tune it first with python -m nlm_jax.finetune.")
  print(f"classifying {len(lengths):,} records ({int(lengths.sum()):,} nt) of {fasta_path} "
        f"with the model in {model_dir} (context {model.cfg.context_length}, "
        f"{model.cfg.precision}, {model.mesh.devices.size} device(s))", flush=True)
  names: list[str] = []

  def sequences() -> Iterator[str]:
    for name, seq in fasta_lib.records(fasta_path, "input"):
      fasta_lib.check_letters(seq, f"record {name!r} of {fasta_path!r}")
      names.append(name)
      yield seq

  progress = cli.Progress(int(lengths.sum()), len(lengths))
  done = 0
  with outputs.writing(out, lambda: check_output(out, overwrite)) as tmp, open(tmp, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(HEADER)
    for probs in model.classify_stream(sequences(), long_sequences):
      for name, p in zip(names[done:done + len(probs)], probs, strict=True):
        writer.writerow((name, f"{p:.6f}", "pcRNA" if p >= 0.5 else "ncRNA"))
      done += len(probs)
      progress.update(int(lengths[:done].sum()), done)
    progress.close()
  return done


def main(argv: list[str]) -> None:
  if len(argv) != 4:
    raise UserError(f"expected MODEL_DIR, FASTA and OUT, got {len(argv) - 1} argument(s). Usage: "
                    "python -m nlm_jax.classify MODEL_DIR FASTA OUT.csv")
  start = time.perf_counter()
  f = flags.FLAGS
  filecache.use_folder(f.fasta_index)
  n = classify_fasta(argv[1], argv[2], argv[3], f.long_sequences, f.batch_size, f.precision,
                     f.overwrite, f.context_length, f.bpe_file)
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
  cli.run(main, "nlm_jax.classify", memory_flags="--batch_size")
