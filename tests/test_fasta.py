import gzip
import json
import os
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import shared_path, write_fasta
from nlm_jax import fasta as fasta_lib
from nlm_jax import filecache
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


def _no_pass(monkeypatch):
  """From here on, a pass over a FASTA file fails the test: opens must read the index."""
  def fail(*args, **kwargs):
    raise AssertionError("the file was read again")
  monkeypatch.setattr(fasta_lib, "_Scan", fail)


def _same(a, b):
  assert len(a) == len(b) and a.identity == b.identity
  np.testing.assert_array_equal(a.lengths, b.lengths)
  for i in range(len(a)):
    assert a.name(i) == b.name(i)
    np.testing.assert_array_equal(a.codes(i), b.codes(i))


@pytest.mark.parametrize("kind", ["plain", "ragged", "gzip"])
def test_a_second_open_reads_the_index(tmp_path, monkeypatch, kind):
  seqs = ["ACGT" * 30, "GATTACA" * 11, "CCN", "uuuu"]
  path = write_fasta(tmp_path / "a.fa", seqs, width=7)
  if kind == "ragged":  # a space inside a line: not readable in place, decoded into codes
    path = str(tmp_path / "r.fa")
    with open(path, "w") as f:
      f.write(">r0 desc\nACG T\nAC\n>r1\nGG\n")
  if kind == "gzip":
    with open(path, "rb") as f, gzip.open(tmp_path / "a.fa.gz", "wb") as g:
      g.write(f.read())
    path = str(tmp_path / "a.fa.gz")
  first = fasta_lib.Fasta(path)
  assert first.in_place == (kind == "plain")
  _no_pass(monkeypatch)
  second = fasta_lib.Fasta(path)
  _same(first, second)
  assert fasta_lib.Fasta(path, random_access=False).lengths.tolist() == first.lengths.tolist()


def test_an_open_of_a_gzipped_file_for_streaming_decodes_no_codes(tmp_path):
  path = tmp_path / "a.fa.gz"
  with gzip.open(path, "wb") as g:
    g.write(b">a\nACGT\n>b\nGGG\n")
  streamed = fasta_lib.Fasta(str(path), random_access=False)
  folder = os.path.dirname(streamed._name_starts.filename)
  assert not os.path.exists(os.path.join(folder, "codes.uint8"))
  assert fasta_lib.Fasta(str(path)).codes(1).tolist() == [2, 2, 2]  # decoded now, then kept
  assert os.path.exists(os.path.join(folder, "codes.uint8"))


def _entries(root):
  return sorted(os.listdir(os.path.join(root, "fasta")))


@pytest.mark.parametrize("change", ["same size, other bytes", "other size", "touched",
                                    "other bytes, modification time set back"])
def test_a_changed_file_is_read_anew(tmp_path, monkeypatch, change):
  monkeypatch.setenv("NLM_JAX_FASTA_INDEX", str(tmp_path / "index"))
  path = write_fasta(tmp_path / "a.fa", ["AAAA", "CCCC"])
  assert fasta_lib.Fasta(path).codes(1).tolist() == [1, 1, 1, 1]
  before = os.stat(path)
  if change == "touched":
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    assert fasta_lib.Fasta(path).codes(1).tolist() == [1, 1, 1, 1]
  else:
    write_fasta(tmp_path / "a.fa", ["GGGGGG", "TTT", "A"] if change == "other size" else ["TTTT", "GGGG"])
    if "set back" in change:
      os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    fa = fasta_lib.Fasta(path)
    assert fa.codes(1).tolist() == ([3, 3, 3] if change == "other size" else [2, 2, 2, 2])
  assert len(_entries(tmp_path / "index")) == 1  # one file, one index
  assert len(os.listdir(os.path.join(tmp_path / "index", "fasta", _entries(tmp_path / "index")[0]))) == 1
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


def test_an_index_folder_that_cannot_be_written_is_replaced_for_the_run(tmp_path, monkeypatch,
                                                                         caplog):
  blocked = tmp_path / "file"
  blocked.write_text("a file, no folder")
  monkeypatch.setenv("NLM_JAX_FASTA_INDEX", str(blocked / "index"))
  monkeypatch.setattr(filecache, "_temporary", [])
  path = write_fasta(tmp_path / "a.fa", ["ACGT", "GG"])
  with caplog.at_level("WARNING"):
    assert fasta_lib.Fasta(path).codes(1).tolist() == [2, 2]
  assert "cannot be written" in caplog.text and "NLM_JAX_FASTA_INDEX" in caplog.text
  assert filecache._temporary and os.path.isdir(filecache._temporary[0])


@pytest.mark.parametrize("damage", ["lengths cut short", "meta.json garbage", "meta.json lacks a key",
                                    "meta.json of another version"])
def test_a_damaged_index_is_built_again(tmp_path, monkeypatch, caplog, damage):
  monkeypatch.setenv("NLM_JAX_FASTA_INDEX", str(tmp_path / "index"))
  seqs = ["ACGTACGT", "GG", "TTA"]
  path = write_fasta(tmp_path / "a.fa", seqs, width=3)
  folder = os.path.dirname(fasta_lib.Fasta(path).lengths.filename)
  meta = os.path.join(folder, "meta.json")
  if damage == "lengths cut short":
    with open(os.path.join(folder, "lengths.int64"), "r+b") as f:
      f.truncate(12)
  elif damage == "meta.json garbage":
    with open(meta, "wb") as f:
      f.write(b"\x00{{ not json")
  else:
    with open(meta) as f:
      content = json.load(f)
    if damage == "meta.json lacks a key":
      del content["lengths" if "lengths" in content else "records"]
    else:
      content["version"] = -1
    with open(meta, "w") as f:
      json.dump(content, f)
  with caplog.at_level("WARNING"):
    again = fasta_lib.Fasta(path)
  assert "does not load" in caplog.text and "building it again" in caplog.text
  assert [again.name(i) for i in range(3)] == ["seq_0", "seq_1", "seq_2"]
  assert ["".join("ACGTN"[c] for c in again.codes(i)) for i in range(3)] == seqs


def test_a_build_that_loses_the_race_uses_the_winners_entry(tmp_path, monkeypatch):
  """Two builders of one entry: each writes a folder of its own and renames it into place;
  the second rename fails, and that builder loads the first one's entry."""
  monkeypatch.setenv("NLM_JAX_FASTA_INDEX", str(tmp_path / "index"))
  path = write_fasta(tmp_path / "a.fa", ["ACGT", "GGA"])
  real_build = fasta_lib._build
  rival = []

  def build_while_another_finishes(entry, *args):
    if not rival:  # the other process: starts after us, ends first
      rival.append(None)
      rival[0] = fasta_lib.Fasta(path)
    return real_build(entry, *args)

  monkeypatch.setattr(fasta_lib, "_build", build_while_another_finishes)
  fa = fasta_lib.Fasta(path)
  _same(fa, rival[0])
  folder = os.path.join(tmp_path / "index", "fasta", _entries(tmp_path / "index")[0])
  assert len(os.listdir(folder)) == 1  # no temporary folder left behind


_OPEN = """
import sys, time
from nlm_jax import fasta
while time.time() < float(sys.argv[2]):
  pass
fa = fasta.Fasta(sys.argv[1])
print(len(fa), int(fa.lengths.sum()), fa.identity, fa.name(len(fa) - 1), fa.codes(len(fa) - 1)[:9].tolist())
"""


def test_processes_that_open_a_new_file_at_once_all_succeed(tmp_path):
  seqs = [s * 40 for s in ["ACGTTGCA", "GATTACA", "CCGGA"]] * 3000
  path = write_fasta(tmp_path / "big.fa", seqs, width=60)
  env = dict(os.environ, NLM_JAX_FASTA_INDEX=str(tmp_path / "index"))
  at = str(time.time() + 3)  # all start the pass together (after their imports)
  procs = [subprocess.Popen([sys.executable, "-c", _OPEN, path, at], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)]
  outs = [p.communicate(timeout=120) for p in procs]
  assert [p.returncode for p in procs] == [0, 0, 0], outs
  assert len({out for out, _ in outs}) == 1, outs
  folder = os.path.join(tmp_path / "index", "fasta", _entries(tmp_path / "index")[0])
  assert len(os.listdir(folder)) == 1


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
  paths = {"in place": 0, "codes": 0}
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
    paths["in place" if fa.in_place else "codes"] += 1
    assert [fa.name(i) for i in range(len(fa))] == [n for n, _ in want]
    assert fa.lengths.tolist() == [len(s) for _, s in want]
    for i, (_, seq) in enumerate(want):
      codes = fasta_lib.encode(seq.decode("latin-1"))
      np.testing.assert_array_equal(fa.codes(i), codes)
      a, b = sorted(rng.integers(0, len(seq) + 1, 2))
      np.testing.assert_array_equal(fa.codes(i, a, b), codes[a:b])
    assert list(fasta_lib.records(str(path))) == [(n, s.decode("latin-1")) for n, s in want]
    _same(fa, fasta_lib.Fasta(str(path)))  # through the index
    # Pre-training's data loading: the training sampler and an evaluation set.
    cfg = Config(str(path), str(path), d_model=16, n_kernels=16, kernel_size=3,
                 context_length=8, batch_size=4, n_samples_per_epoch=8).validate()
    encoding = sampler.encoding_for(cfg)
    batch = next(sampler.TrainSampler(fa, cfg, encoding).epoch(0))
    assert batch["inputs"].shape[0] == 4
    sampler.eval_set(fa, np.arange(len(fa)), encoding, seed=1)
  assert paths["in place"] >= 5 and paths["codes"] >= 20, paths


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
