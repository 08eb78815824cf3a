import gzip
import os
import stat

import numpy as np
import pytest

from conftest import shared_path, write_fasta
from nlm_jax import fasta as fasta_lib
from nlm_jax.config import UserError


def test_normalisation():
  np.testing.assert_array_equal(fasta_lib.encode("ACGTacgtUuNRYKM-*"),
                                [0, 1, 2, 3, 0, 1, 2, 3, 3, 3, 4, 4, 4, 4, 4, 4, 4])


def test_random_access_windows(tmp_path):
  fa = fasta_lib.Fasta(write_fasta(tmp_path / "a.fa", ["ACGTACGTAA", "ttuu", "GGNRC"]))
  assert len(fa) == 3
  np.testing.assert_array_equal(fa.lengths, [10, 4, 5])
  np.testing.assert_array_equal(fa.codes(0, 2, 6), [2, 3, 0, 1])
  np.testing.assert_array_equal(fa.codes(1), [3, 3, 3, 3])
  np.testing.assert_array_equal(fa.codes(2), [2, 2, 4, 4, 1])
  assert fa.name(2) == "seq_2"


def test_gzip_reads_like_plain(tmp_path):
  seqs = ["ACGT" * 30, "GATTACA" * 11, "CCN"]
  plain = fasta_lib.Fasta(write_fasta(tmp_path / "a.fa", seqs))
  with open(tmp_path / "a.fa", "rb") as f, gzip.open(tmp_path / "b.fa.gz", "wb") as g:
    g.write(f.read())
  gz = fasta_lib.Fasta(str(tmp_path / "b.fa.gz"))
  np.testing.assert_array_equal(gz.lengths, plain.lengths)
  for i in range(3):
    np.testing.assert_array_equal(gz.codes(i, 1, 50), plain.codes(i, 1, 50))


def test_a_changed_file_is_read_anew(tmp_path):
  """pyfastx reuses a stale .fxi index; we index in memory, so the new content counts."""
  path = write_fasta(tmp_path / "a.fa", ["AAAA", "CCCC"])
  assert fasta_lib.Fasta(path).codes(1).tolist() == [1, 1, 1, 1]
  write_fasta(tmp_path / "a.fa", ["GGGGGG", "TTT", "A"])
  fa = fasta_lib.Fasta(path)
  assert fa.lengths.tolist() == [6, 3, 1] and fa.codes(1).tolist() == [3, 3, 3]
  assert not os.path.exists(path + ".fxi")


def test_read_only_folder(tmp_path):
  folder = tmp_path / "ro"
  folder.mkdir()
  path = write_fasta(folder / "a.fa", ["ACGT"])
  os.chmod(folder, stat.S_IRUSR | stat.S_IXUSR)
  try:
    assert fasta_lib.Fasta(path).codes(0).tolist() == [0, 1, 2, 3]
  finally:
    os.chmod(folder, stat.S_IRWXU)


@pytest.mark.parametrize("content, fragment", [
    (None, "does not exist"),
    (b"", "is empty"),
    (b"\n  \n", "no records"),
    (b"hello world\n", "not FASTA"),
    (b">a\nACGT\n>b\n>c\nAC\n", "without sequence (b)"),
    (b"  >a\nACGT\n", "not FASTA"),  # an indented '>' opens no record
])
def test_bad_files(tmp_path, content, fragment):
  path = tmp_path / "x.fa"
  if content is not None:
    path.write_bytes(content)
  with pytest.raises(UserError, match=".*") as e:
    fasta_lib.Fasta(str(path))
  assert fragment in str(e.value)


def test_shared_lncrnapy_fixture():
  fa = fasta_lib.Fasta(shared_path("data", "small_ncrna.fasta"))
  assert fa.lengths.tolist() == [60, 712, 535, 1187, 590, 1414, 2748, 491, 629]
  assert fa.codes(0)[23] == fasta_lib.N and (fa.codes(0) != fasta_lib.N).sum() == 59


# ------------------------------------------------------------------------- fuzzing

BOM = b"\xef\xbb\xbf"


def reference_records(data: bytes) -> list[tuple[str, bytes]]:
  """What a FASTA file says, written plainly: '>' lines name records (first word, UTF-8
  with other bytes escaped), every other byte but whitespace is sequence."""
  records = []
  for line in data.removeprefix(BOM).split(b"\n"):
    if line.startswith(b">"):
      words = line[1:].split(None, 1)
      records.append((words[0].decode("utf-8", "backslashreplace") if words else "", bytearray()))
    elif records:
      records[-1][1].extend(c for c in line if c not in b" \t\n\v\f\r")
  return [(name, bytes(seq)) for name, seq in records]


def fuzz_fasta(rng: np.random.Generator, odd: bool = True) -> bytes:
  """Random records with what users' files hold: wrapped and ragged lines, and where `odd`,
  empty and blank lines (after a header too), spaces and tabs, CR/CRLF/mixed endings, a
  BOM, high bytes."""
  newline = [b"\n", b"\r\n", None][rng.integers(3 if odd else 2)]  # None: mixed
  out = [BOM] if odd and rng.random() < 0.2 else []
  p_odd = 0.3 if odd else 0.0

  def end():
    return newline or [b"\n", b"\r\n"][rng.integers(2)]

  def junk_lines():
    return b"".join(rng.choice([b"", b" ", b"\t", b"  \t"]) + end()
                    for _ in range(rng.integers(3) if rng.random() < p_odd else 0))

  for i in range(rng.integers(1, 8)):
    name = b"r%d" % i + bytes(rng.integers(128, 256, rng.integers(3) * odd).astype(np.uint8))
    desc = rng.choice([b"", b" desc", b"\tx y", b" \xe9t\xe9"][:4 if odd else 3])
    out.append(b">" + name + desc + end() + junk_lines())
    letters = list(b"ACGTacgtuUNnRY-.*\xc3" if odd else b"ACGTacgtuUNnRY-.*")
    seq = bytes(rng.choice(letters, rng.integers(1, 120)).astype(np.uint8))
    width = int(rng.integers(1, 70))
    for j in range(0, len(seq), width):
      line = seq[j:j + width]
      if rng.random() < p_odd / 3:
        k = int(rng.integers(len(line) + 1))
        line = line[:k] + rng.choice([b" ", b"\t", b"  "]) + line[k:]
      out.append(line + end() + junk_lines())
  data = b"".join(out)
  return data.rstrip(b"\r\n") if rng.random() < 0.2 else data  # no final line end


@pytest.mark.parametrize("block", [None, 7])  # 7 bytes: records and lines span blocks
def test_fuzzed_files_read_exactly_or_refused(tmp_path, monkeypatch, block):
  from nlm_jax import sampler
  from nlm_jax.config import Config

  if block:
    monkeypatch.setattr(fasta_lib, "_BLOCK", block)
  rng = np.random.default_rng(0 if block is None else 1)
  paths = {"indexed": 0, "cached": 0}
  for trial in range(60):
    data = fuzz_fasta(rng, odd=trial % 4 != 0)
    if trial % 10 == 9:  # a NUL byte anywhere: refused, never read as something else
      k = int(rng.integers(len(data)))
      data = data[:k] + b"\0" + data[k:]
    path = tmp_path / f"f{trial}.fa"
    if trial % 6 == 5:  # two gzip members, split anywhere (as `cat a.gz b.gz` makes)
      k = int(rng.integers(len(data) + 1))
      path.write_bytes(gzip.compress(data[:k]) + gzip.compress(data[k:]))
    else:
      path.write_bytes(gzip.compress(data) if trial % 3 == 2 else data)
    if b"\0" in data:
      with pytest.raises(UserError, match="NUL byte"):
        fasta_lib.Fasta(str(path))
      continue
    want = reference_records(data)
    fa = fasta_lib.Fasta(str(path))
    paths["indexed" if fa._cache is None else "cached"] += 1
    assert [fa.name(i) for i in range(len(fa))] == [n for n, _ in want]
    assert fa.lengths.tolist() == [len(s) for _, s in want]
    for i, (_, seq) in enumerate(want):
      codes = fasta_lib.encode(seq.decode("latin-1"))
      np.testing.assert_array_equal(fa.codes(i), codes)
      a, b = sorted(rng.integers(0, len(seq) + 1, 2))
      np.testing.assert_array_equal(fa.codes(i, a, b), codes[a:b])
    assert list(fasta_lib.records(str(path))) == [(n, s.decode("latin-1")) for n, s in want]
    # Pre-training's data loading: the training sampler and an evaluation set.
    cfg = Config(str(path), str(path), d_model=16, n_kernels=16, kernel_size=3,
                 context_length=8, batch_size=4, n_samples_per_epoch=8).validate()
    encoding = sampler.encoding_for(cfg)
    batch = next(sampler.TrainSampler(fa, cfg, encoding).epoch(0))
    assert batch["inputs"].shape[0] == 4
    sampler.eval_set(fa, np.arange(len(fa)), encoding, seed=1)
  assert paths["indexed"] >= 5 and paths["cached"] >= 20, paths


def test_empty_line_after_a_header_is_read(tmp_path):
  """pyfastx's slicing divides by the first line's width: an empty first line killed the
  process with SIGFPE (exit 136)."""
  path = tmp_path / "e.fa"
  path.write_bytes(b">a\n\nACGTAC\n>b\r\n\r\nGG\r\n")
  fa = fasta_lib.Fasta(str(path))
  assert fa.codes(0, 1, 4).tolist() == [1, 2, 3] and fa.codes(1).tolist() == [2, 2]


def test_cr_only_line_ends_are_refused(tmp_path):
  path = tmp_path / "mac.fa"
  path.write_bytes(b">a\rACGT\r>b\rGG\r")
  with pytest.raises(UserError, match="CR alone"):
    fasta_lib.Fasta(str(path))


def test_a_file_without_targets_is_refused_where_targets_are_needed(tmp_path):
  path = tmp_path / "n.fa"
  path.write_bytes(b">a\nNNNN-..\n>b\nnnRY\n")
  assert fasta_lib.Fasta(str(path)).lengths.tolist() == [7, 4]  # embed reads it
  with pytest.raises(UserError, match="holds no A, C, G, T or U"):
    fasta_lib.Fasta(str(path), "training", targets=True)
  path.write_bytes(b">a\nNNNN-..\n>b\nnnRu\n")  # one U is enough
  fasta_lib.Fasta(str(path), targets=True)
