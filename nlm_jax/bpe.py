r"""Fits a sentencepiece BPE model on a FASTA file, for --encoding_method bpe.

  python -m nlm_jax.bpe FASTA VOCAB_SIZE [--bpe_file F] [--data_dir D]

The model has lncRNA-Py's special ids (MASK 0, CLS 1, SEP 2, PAD 3, UNK 4) and is
written to F (default features/VOCAB_SIZE.bpe under --data_dir). Sequences are
normalised as for pre-training (upper case, U -> T, other letters -> N); sequences
longer than 10,000 nt are cut into 10,000-nt pieces (lncRNA-Py's trainer skipped them).
"""

from __future__ import annotations

import io
import os
import re
import threading
import time

import numpy as np
from absl import app
from absl import flags

from nlm_jax import cli
from nlm_jax import config
from nlm_jax import filecache
from nlm_jax.config import check_writable
from nlm_jax.errors import UserError

MAX_SENTENCE = 10_000

_BPE_FILE = flags.DEFINE_string("bpe_file", "", "Output file (default features/VOCAB_SIZE.bpe).")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "Parent directory of FASTA and --bpe_file (empty: as given).")
_FASTA_INDEX = flags.DEFINE_string("fasta_index", None, config.FASTA_INDEX_HELP)
HELP_GROUPS = {"data": ("data_dir", "bpe_file")}


def _texts(path: str, counter: dict[str, int]):
  from nlm_jax import fasta as fasta_lib

  letters = np.frombuffer(fasta_lib.ALPHABET.encode(), dtype=np.uint8)
  for _, seq in fasta_lib.records(path):
    codes = fasta_lib.encode(seq)
    counter["sequences"] += 1
    counter["nucleotides"] += len(codes)
    if counter["sequences"] % 10_000 == 0:
      print(f"  read {counter['sequences']:,} sequences ({counter['nucleotides']:,} nt)", flush=True)
    text = letters[codes].tobytes()
    for start in range(0, len(text), MAX_SENTENCE):
      yield text[start:start + MAX_SENTENCE].decode()


def _check_out(out_path: str) -> None:
  if os.path.lexists(out_path):
    raise UserError(f"{out_path!r} already exists: choose another --bpe_file or delete it.")
  check_writable(os.path.dirname(os.path.abspath(out_path)), "output", "--bpe_file")


def fit(fasta_path: str, vocab_size: int, out_path: str) -> int:
  """Fits and writes the model; returns its vocabulary size."""
  import sentencepiece as spm

  from nlm_jax import fasta as fasta_lib
  from nlm_jax import outputs

  if vocab_size < 9:
    raise UserError(f"VOCAB_SIZE {vocab_size} is too small: the 5 special tokens and the 4 "
                    "nucleotides need at least 9 pieces.")
  fa = fasta_lib.Fasta(fasta_path, "the", random_access=False)  # validates: one-line errors
  fasta_lib.check_alphabet(fa, "the")
  del fa
  _check_out(out_path)

  counter = {"sequences": 0, "nucleotides": 0}
  model = io.BytesIO()
  done = threading.Event()
  start = time.perf_counter()

  def heartbeat():
    while not done.wait(10):
      print(f"  fitting BPE ({vocab_size} pieces): {time.perf_counter() - start:.0f} s", flush=True)

  print(f"fitting a {vocab_size}-piece BPE model on {fasta_path}", flush=True)
  threading.Thread(target=heartbeat, daemon=True).start()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=_texts(fasta_path, counter), model_writer=model,
        vocab_size=vocab_size, model_type="bpe", character_coverage=1.0,
        max_sentence_length=MAX_SENTENCE, control_symbols=["MASK"], unk_id=4, bos_id=1,
        eos_id=2, pad_id=3, add_dummy_prefix=False, minloglevel=2)
  except RuntimeError as e:
    message = str(e)
    high = re.search(r"value <= (\d+)", message)
    if high:
      raise UserError(f"VOCAB_SIZE {vocab_size} is too large for {fasta_path!r}: this data "
                      f"allows at most {high.group(1)}.") from None
    low = re.search(r"required_chars\. (\d+) vs (\d+)", message)
    if low:
      raise UserError(f"VOCAB_SIZE {vocab_size} is too small for {fasta_path!r}: its letters and "
                      f"the special tokens need at least {low.group(2)}.") from None
    raise UserError(f"sentencepiece could not fit {fasta_path!r}: {message.splitlines()[0]}") from None
  finally:
    done.set()
  with outputs.writing(out_path, lambda: _check_out(out_path), "--bpe_file") as tmp:
    with open(tmp, "wb") as f:
      f.write(model.getvalue())
  sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
  print(f"wrote {out_path}: {sp.get_piece_size()} pieces from {counter['sequences']:,} sequences "
        f"({counter['nucleotides']:,} nt) in {time.perf_counter() - start:.1f} s", flush=True)
  return sp.get_piece_size()


def fail(message: str) -> None:
  cli.fail("nlm_jax.bpe", message)


def parse_flags(argv: list[str]) -> list[str]:
  if any(arg in cli.HELP_ARGS for arg in argv[1:]):
    cli.print_help("nlm_jax.bpe", HELP_GROUPS)
  try:
    cli.check_flagfiles(argv)
    return flags.FLAGS(argv)
  except UserError as e:
    fail(str(e))
  except flags.UnrecognizedFlagError as e:
    if e.flagname.isdigit():  # absl reads a negative VOCAB_SIZE ("-3") as a flag
      fail(f"VOCAB_SIZE must be a positive whole number, got -{e.flagname}.")
    fail(f"{str(e).replace('ERROR:: ', '')} (see --help for every flag).")
  except flags.Error as e:
    fail(f"{str(e).replace('ERROR:: ', '')} (see --help for every flag).")


def main(argv: list[str]) -> None:
  if len(argv) != 3:
    fail("expected FASTA and VOCAB_SIZE: python -m nlm_jax.bpe FASTA VOCAB_SIZE [--bpe_file F]")
  try:
    vocab_size = int(argv[2])
  except ValueError:
    fail(f"VOCAB_SIZE must be a whole number, got {argv[2]!r}.")
  with cli.one_line_errors("nlm_jax.bpe"):
    filecache.use_folder(_FASTA_INDEX.value)
    under = lambda p: os.path.join(_DATA_DIR.value, p) if _DATA_DIR.value else p
    fasta = under(argv[1])
    if _DATA_DIR.value and not os.path.lexists(fasta):
      raise UserError(f"FASTA {fasta!r} does not exist: check the path and --data_dir.")
    fit(fasta, vocab_size, under(_BPE_FILE.value or os.path.join("features", f"{vocab_size}.bpe")))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
