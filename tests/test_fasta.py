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
