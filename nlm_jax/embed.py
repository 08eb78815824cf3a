r"""Embeds every record of one or more FASTA files with a pre-trained model, and draws
them in two dimensions if asked.

  python -m nlm_jax.embed MODEL_DIR FASTA [FASTA ...] OUT.npz [--pooling mean|max|cls]
      [--plot pca|tsne|umap] [--long_sequences windows|truncate|lncrnapy] [--batch_size 64]
      [--precision auto] [--overwrite] [--context_length N] [--bpe_file F]

MODEL_DIR is a pre-training folder (model_dir/exp_name; its best checkpoint), an export
folder, or a folder of lncRNA-Py's save_pretrained (its MaskedConvModel and
MaskedTokenModel: the published lncRNA-BERT models), or its Hugging Face hub id
(luukromeijn/lncRNA-BERT-CSE-k9-pretrained). OUT.npz holds
  ids         the record names, in file order (the files' one after another) (str)
  lengths     the records' lengths in nucleotides (int64)
  embeddings  (records, d_model) float32: row i embeds record i
Pooling and long sequences: see nlm_jax/pretrained.py. Progress goes to stdout, errors to
stderr (one line). Records are read one after another
and embedded in chunks, and the embeddings are streamed into the file as they come, so
memory does not grow with the number of records. The file is written under a temporary
name and renamed when complete, by one command at a time (outputs.py); an existing OUT is
refused unless --overwrite and embed wrote it; OUT inside a model or export folder is
refused; a missing folder of OUT is made.

--plot pca (NumPy), tsne or umap (pip install -e '.[plots]') then projects the embeddings
to two dimensions (projection.py; all of them in memory) and writes OUT.png (OUT.npz ->
OUT.png, under the same rules as OUT), a colour per FASTA file.
"""

from __future__ import annotations

import contextlib
import os
import time
import zipfile
from typing import Iterator, Sequence

import numpy as np
from absl import flags

from nlm_jax import allocator
from nlm_jax import cli
from nlm_jax import config
from nlm_jax import fasta as fasta_lib
from nlm_jax import filecache
from nlm_jax import outputs
from nlm_jax import projection
from nlm_jax.config import UserError

_POOLING = flags.DEFINE_enum("pooling", "mean", ["mean", "max", "cls"],
                             "mean or max over the real positions, or the CLS output.")
_LONG = flags.DEFINE_enum("long_sequences", "windows", ["windows", "truncate", "lncrnapy"],
                          "Sequences longer than the context: pool over all their windows, "
                          "keep the first window only (truncate), or as lncRNA-Py does "
                          "(lncrnapy: conv the last window, the 3' end; tokens the first).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Rows per device step.", lower_bound=1)
_PRECISION = flags.DEFINE_enum("precision", "auto", ["auto", "fp32", "bf16"],
                               "auto: bf16 on GPU/TPU, fp32 on CPU.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False,
                               "Replace OUT if it is an earlier output of embed.")
_CONTEXT = flags.DEFINE_integer(
    "context_length", None, "Positions of a window, CLS included (default: the model's; 768 "
    "for lncRNA-Py's folders, which do not store it).", lower_bound=2)
_BPE_FILE = flags.DEFINE_string("bpe_file", "", "The .bpe file of a lncRNA-Py BPE model "
                                "(nlm_jax's folders hold their own).")
_FASTA_INDEX = flags.DEFINE_string("fasta_index", None, config.FASTA_INDEX_HELP)
_PLOT = flags.DEFINE_enum("plot", "none", ["none", *projection.METHODS],
                          "Also draw the embeddings in two dimensions, a colour per FASTA file, "
                          "into OUT.png: pca (NumPy), tsne or umap (these two need pip install "
                          "-e '.[plots]').")
# --help: the flags of lncRNA-Py's embeddings script first.
HELP_GROUPS = {"architecture": ("context_length", "bpe_file"),
               "embeddings": ("pooling", "batch_size", "plot")}


class NpzStream:
  """An .npz file whose `embeddings` member is written row block by row block. np.load
  reads it as any .npz."""

  def __init__(self, path: str, n_rows: int, d: int):
    self.zf = zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True)
    self.f = self.zf.open("embeddings.npy", "w", force_zip64=True)
    np.lib.format.write_array_header_1_0(self.f, {
        "descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False,
        "shape": (n_rows, d)})
    self.rows, self.n_rows = 0, n_rows

  def write(self, block: np.ndarray) -> None:
    self.f.write(np.ascontiguousarray(block, dtype="<f4").tobytes())
    self.rows += len(block)

  def abort(self) -> None:
    """Closes what is open, whatever failed (a full disk), so nothing writes later."""
    for close in (self.f.close, self.zf.close, self.zf.fp.close if self.zf.fp else None):
      if close is not None:
        with contextlib.suppress(OSError, ValueError):
          close()

  def close(self, **arrays: np.ndarray) -> None:
    """Adds the other members; the row count must be what the header promised."""
    self.f.close()
    assert self.rows == self.n_rows, (self.rows, self.n_rows)
    for name, a in arrays.items():
      with self.zf.open(f"{name}.npy", "w", force_zip64=True) as f:
        np.lib.format.write_array(f, np.asarray(a), allow_pickle=False)
    self.zf.close()


def _records(path: str) -> Iterator[tuple[str, str]]:
  for name, seq in fasta_lib.records(path, "input"):
    fasta_lib.check_letters(seq, f"record {name!r} of {path!r}")
    yield name, seq


def _is_embedding_file(path: str) -> bool:
  try:
    with zipfile.ZipFile(path) as zf:
      return {"ids.npy", "lengths.npy", "embeddings.npy"} == set(zf.namelist())
  except (OSError, zipfile.BadZipFile):
    return False


def check_output(out: str, overwrite: bool) -> None:
  """OUT must be a new .npz, or with --overwrite one that embed wrote, outside any model
  or export folder."""
  outputs.check_file(out, overwrite, ".npz", "embed", _is_embedding_file)


def plot_path(out: str) -> str:
  """Where --plot draws: OUT.npz -> OUT.png."""
  return out.removesuffix(".npz") + ".png"


def check_plot(out: str, overwrite: bool) -> None:
  outputs.check_file(plot_path(out), overwrite, ".png", "embed", projection.is_plot_file)


def embed_fasta(model_dir: str, fasta_path: str | Sequence[str], out: str, pooling: str = "mean",
                long_sequences: str = "windows", batch_size: int = 64,
                precision: str = "auto", overwrite: bool = False,
                context_length: int | None = None, bpe_file: str = "", plot: str = "none") -> int:
  """Writes `out` (see the module docstring) from the records of `fasta_path`, one FASTA
  file or several in turn, and with `plot` (pca, tsne, umap) OUT.png; returns the number
  of records."""
  paths = [fasta_path] if isinstance(fasta_path, str) else list(fasta_path)
  check_output(out, overwrite)
  if plot != "none":
    projection.check_available(plot)
    check_plot(out, overwrite)
  counts = []
  for path in paths:
    fa = fasta_lib.Fasta(path, "input", random_access=False)  # validates; lengths
    fasta_lib.check_alphabet(fa, "input")
    counts.append(fa.lengths)
  lengths = np.concatenate(counts)
  cli.start_jax()
  from nlm_jax import pretrained

  model = pretrained.load(model_dir, precision=precision, batch_size=batch_size,
                          bpe_file=bpe_file, context_length=context_length)
  print(f"embedding {len(lengths):,} records ({int(lengths.sum()):,} nt) of {' and '.join(paths)} with "
        f"the model in {model_dir} ({pooling} pooling, context {model.cfg.context_length}, "
        f"{model.cfg.precision}, {model.mesh.devices.size} device(s), {allocator.describe()})",
        flush=True)
  names: list[str] = []

  def sequences() -> Iterator[str]:
    for path in paths:
      for name, seq in _records(path):
        names.append(name)
        yield seq

  progress = cli.Progress(int(lengths.sum()), len(lengths))
  with outputs.writing(out, lambda: check_output(out, overwrite)) as tmp:
    stream = NpzStream(tmp, len(lengths), model.d_model)
    try:
      for block in model.embed_stream(sequences(), pooling, long_sequences):
        stream.write(block)
        progress.update(int(lengths[:stream.rows].sum()), stream.rows)
      progress.close()
      stream.close(ids=np.array(names, dtype=str), lengths=lengths)
    except BaseException:
      stream.abort()
      raise
  if plot != "none":
    with np.load(out) as z:
      xy_Nx2 = projection.project(z["embeddings"], plot)
    file_N = np.repeat(np.arange(len(paths)), [len(c) for c in counts])
    with outputs.writing(plot_path(out), lambda: check_plot(out, overwrite)) as tmp:
      projection.draw(xy_Nx2, file_N, paths, plot, tmp,
                      f"{os.path.basename(os.path.normpath(model_dir))}\n{pooling} embeddings, {plot}")
  return len(lengths)


def main(argv: list[str]) -> None:
  if len(argv) < 4:
    raise UserError(f"expected MODEL_DIR, FASTA (one or more) and OUT, got {len(argv) - 1} "
                    "argument(s). Usage: python -m nlm_jax.embed MODEL_DIR FASTA OUT.npz "
                    "[--pooling mean]")
  start = time.perf_counter()
  filecache.use_folder(_FASTA_INDEX.value)
  out = argv[-1]
  n = embed_fasta(argv[1], argv[2:-1], out, _POOLING.value, _LONG.value, _BATCH_SIZE.value,
                  _PRECISION.value, _OVERWRITE.value, _CONTEXT.value, _BPE_FILE.value, _PLOT.value)
  plotted = f" and {plot_path(out)}" if _PLOT.value != "none" else ""
  print(f"wrote {out}{plotted}: {n:,} embeddings in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
  allocator.preload()  # re-executes this command with mimalloc, before JAX loads
  cli.exit_without_collecting()
  cli.run(main, "nlm_jax.embed", memory_flags="--batch_size", groups=HELP_GROUPS)
