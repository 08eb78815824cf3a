"""Bad input to `python -m nlm_jax.pretrain` (pretrain-cli.md) ends in one line on stderr.

The rule: bad input gets ONE line on stderr, `nlm_jax.pretrain: error: <problem>: <fix>`, a
non-zero exit status, no traceback, and leaves everything that was on disk as it was (no
file created, changed or removed; a new, empty folder is tolerated). Legal but odd input
(short sequences, IUPAC letters, gzip, CRLF) is handled instead: the run finishes and
writes finite numbers.

Every case runs the real command in a subprocess, in its own tmp_path with generated FASTA
files. Most error cases end before JAX is imported (~0.1 s); the FASTA and folder checks
happen after (~1 s); five cases train the tiny model below (~10 s each on a CPU).
"""

import csv
import gzip
import hashlib
import math
import os
import subprocess
import sys

import numpy as np
import pytest

PREFIX = "nlm_jax.pretrain: error:"
EXP = "MLM_conv_nm16_sm3_dm16_N1_h2_bs8_ws2_cl8_d0"  # the experiment name of TINY
TINY = ["--d_model=16", "--N=1", "--h=2", "--n_kernels=16", "--kernel_size=3",
        "--context_length=8", "--batch_size=8", "--epochs=1", "--n_samples_per_epoch=16",
        "--warmup_steps=2", "--results_dir=R", "--model_dir=M"]
COLUMNS = ("Loss|train", "Accuracy|train", "Loss|valid", "Accuracy|valid")


# ---------------------------------------------------------------------------- helpers


def random_seqs(n, min_len, max_len, seed):
  rng = np.random.default_rng(seed)
  return ["".join(rng.choice(list("ACGT"), int(rng.integers(min_len, max_len + 1))))
          for _ in range(n)]


def write_fasta(path, seqs, prefix="seq", newline="\n", width=None):
  """Writes records `prefix_i`; `width` wraps sequence lines, `newline` ends every line."""
  with open(path, "w", newline="") as f:
    for i, s in enumerate(seqs):
      f.write(f">{prefix}_{i}{newline}")
      step = width or max(len(s), 1)
      for j in range(0, len(s), step):
        f.write(s[j:j + step] + newline)
  return str(path)


def good_files(tmp_path):
  """train.fa and valid.fa: random ACGT that the tiny config trains on."""
  write_fasta(tmp_path / "train.fa", random_seqs(24, 20, 80, seed=1), "train")
  write_fasta(tmp_path / "valid.fa", random_seqs(16, 20, 80, seed=2), "valid")


def run_pretrain(tmp_path, *args, timeout=300):
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # conftest fakes 8 devices for in-process tests; not here
  env["PYTHONUNBUFFERED"] = "1"
  return subprocess.run([sys.executable, "-m", "nlm_jax.pretrain", *args], cwd=tmp_path,
                        env=env, capture_output=True, text=True, errors="replace",
                        timeout=timeout)


def snapshot(root):
  """({file: (sha256, size, mtime_ns, mode)}, {folder: mtime_ns}) of the tree under root."""
  files, dirs = {}, {}
  for dirpath, _, filenames in os.walk(root):
    rel = os.path.relpath(dirpath, root)
    dirs["" if rel == "." else rel] = os.stat(dirpath).st_mtime_ns
    for name in filenames:
      path = os.path.join(dirpath, name)
      st = os.lstat(path)
      with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
      files[os.path.relpath(path, root)] = (digest, st.st_size, st.st_mtime_ns, st.st_mode)
  return files, dirs


def assert_unchanged(before, after):
  files0, dirs0 = before
  files1, dirs1 = after
  created = sorted(set(files1) - set(files0))
  removed = sorted(set(files0) - set(files1))
  assert not created, f"bad input left new files behind: {created}"
  assert not removed, f"bad input removed files: {removed}"
  changed = sorted(p for p in files0 if files0[p] != files1[p])
  assert not changed, f"bad input changed files: {changed}"
  gone = sorted(set(dirs0) - set(dirs1))
  assert not gone, f"bad input removed folders: {gone}"
  # A new (necessarily empty: no new files) folder changes its parent's mtime; tolerated.
  parents = {os.path.dirname(d) for d in set(dirs1) - set(dirs0)}
  touched = sorted(d for d in dirs0 if d not in parents and dirs0[d] != dirs1[d])
  assert not touched, f"bad input changed folders: {touched}"


def assert_one_line_error(proc, fragments):
  both = proc.stdout + proc.stderr
  assert "Traceback" not in both, both
  assert proc.returncode != 0, both
  assert proc.stdout.strip() == "", f"stdout should be empty:\n{proc.stdout}"
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{proc.stderr}"
  line = lines[0]
  assert line.startswith(PREFIX), line
  for fragment in fragments:
    assert fragment in line, f"{fragment!r} missing from: {line}"


def history_rows(tmp_path, epochs=1):
  """The run's history.csv rows (and its checkpoint is there), all numbers finite."""
  path = tmp_path / "R" / EXP / "history.csv"
  assert path.is_file(), f"no {path}; results: {sorted(os.listdir(tmp_path / 'R'))}"
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == epochs
  for row in rows:
    for column in COLUMNS:
      assert math.isfinite(float(row[column])), row
    assert 0.0 <= float(row["Accuracy|train"]) <= 1.0
    assert 0.0 <= float(row["Accuracy|valid"]) <= 1.0
  assert (tmp_path / "M" / EXP / "config.json").is_file()
  return rows


def assert_trains(proc, tmp_path):
  both = proc.stdout + proc.stderr
  assert proc.returncode == 0, both
  assert "Traceback" not in both, both
  return history_rows(tmp_path)


# ------------------------------------------------------------------------ error cases
# Each case writes what it needs into tmp (train.fa and valid.fa are already there) and
# returns (arguments, fragments the error line must contain).


def _empty(tmp):
  (tmp / "empty.fa").write_bytes(b"")
  return ["empty.fa", "valid.fa"], ["training", "'empty.fa'", "empty"]


def _empty_valid(tmp):
  (tmp / "empty.fa").write_bytes(b"")
  return ["train.fa", "empty.fa"], ["validation", "'empty.fa'", "empty"]


def _whitespace(tmp):
  (tmp / "blank.fa").write_bytes(b"  \n\n\t \r\n   \n")
  return ["blank.fa", "valid.fa"], ["'blank.fa'", "no records"]


def _text(tmp):
  (tmp / "notes.txt").write_text("These are my notes.\nACGT is not a header.\n")
  return ["notes.txt", "valid.fa"], ["'notes.txt'", "not FASTA", "'>'"]


def _binary(tmp):
  rng = np.random.default_rng(3)
  # NUL first: never whitespace, never '>' nor the gzip magic.
  (tmp / "garbage.bin").write_bytes(b"\x00\xff" + rng.integers(0, 256, 5000, np.uint8).tobytes())
  return ["garbage.bin", "valid.fa"], ["'garbage.bin'", "not FASTA"]


def _corrupt_gzip(tmp):
  data = gzip.compress((tmp / "train.fa").read_bytes())
  (tmp / "broken.fa.gz").write_bytes(data[:len(data) // 3])
  return ["broken.fa.gz", "valid.fa"], ["'broken.fa.gz'", "cannot be read"]


def _record_without_sequence(tmp):
  seqs = random_seqs(10, 20, 60, seed=4)
  with open(tmp / "holes.fa", "w") as f:
    for i, s in enumerate(seqs):
      f.write(f">good_{i}\n{s}\n")
      if i == 4:
        f.write(">hole_record\n")
  return ["holes.fa", "valid.fa"], ["'holes.fa'", "without sequence", "hole_record"]


def _last_record_without_sequence(tmp):
  write_fasta(tmp / "tail.fa", random_seqs(10, 20, 60, seed=5), "good")
  with open(tmp / "tail.fa", "a") as f:
    f.write(">tail_record\n")
  return ["train.fa", "tail.fa"], ["validation", "'tail.fa'", "without sequence", "tail_record"]


def _folder(tmp):
  (tmp / "data.fa").mkdir()
  return ["data.fa", "valid.fa"], ["'data.fa'", "folder"]


def _data_dir_without_files(tmp):
  (tmp / "elsewhere").mkdir()
  (tmp / "elsewhere" / "other.fa").write_text(">x\nACGT\n")
  return (["train.fa", "valid.fa", "--data_dir=elsewhere"],
          [os.path.join("elsewhere", "train.fa"), "does not exist", "--data_dir"])


def _flagfile_with_unknown_flag(tmp):
  (tmp / "bad.flags").write_text("--epochs=1\n--no_such_flag=3\n")
  return ["train.fa", "valid.fa", "--flagfile=bad.flags"], ["no_such_flag"]


def _results_parent_is_file(tmp):
  (tmp / "blocker").write_text("a regular file\n")
  return (["train.fa", "valid.fa", "--results_dir=blocker/R"],
          ["results folder", "blocker", "--results_dir"])


def _model_parent_is_file(tmp):
  (tmp / "blocker").write_text("a regular file\n")
  return (["train.fa", "valid.fa", "--model_dir=blocker/M"],
          ["model folder", "blocker", "--model_dir"])


def _args(*args, fragments):
  return lambda tmp: (list(args), fragments)


ERROR_CASES = {
    # FASTA files.
    "train_missing": _args("nope.fa", "valid.fa",
                           fragments=["training", "'nope.fa'", "does not exist"]),
    "valid_missing": _args("train.fa", "nope.fa",
                           fragments=["validation", "'nope.fa'", "does not exist"]),
    "empty_file": _empty,
    "empty_valid_file": _empty_valid,
    "whitespace_only": _whitespace,
    "text_not_fasta": _text,
    "binary_garbage": _binary,
    "corrupt_gzip": _corrupt_gzip,
    "record_without_sequence": _record_without_sequence,
    "last_record_without_sequence": _last_record_without_sequence,
    "folder_instead_of_file": _folder,
    "data_dir_without_files": _data_dir_without_files,
    # Positional arguments and flags.
    "one_path": _args("train.fa", fragments=["expected two FASTA paths", "got 1"]),
    "three_paths": _args("train.fa", "valid.fa", "valid.fa",
                         fragments=["expected two FASTA paths", "got 3"]),
    "unknown_flag": _args("train.fa", "valid.fa", "--no_such_flag",
                          fragments=["no_such_flag", "--helpfull"]),
    "epochs_not_int": _args("train.fa", "valid.fa", "--epochs=abc", fragments=["--epochs", "abc"]),
    "encoding_unknown": _args("train.fa", "valid.fa", "--encoding_method=foo",
                              fragments=["--encoding_method", "foo", "conv"]),
    "epochs_zero": _args("train.fa", "valid.fa", "--epochs=0", fragments=["--epochs", "at least 1"]),
    "batch_size_zero": _args("train.fa", "valid.fa", "--batch_size=0",
                             fragments=["--batch_size", "at least 1"]),
    "p_mlm_above_1": _args("train.fa", "valid.fa", "--p_mlm=1.5",
                           fragments=["--p_mlm", "1.5", "[0, 1]"]),
    "p_mask_plus_p_random": _args("train.fa", "valid.fa", "--p_mask=0.9", "--p_random=0.2",
                                  fragments=["--p_mask", "--p_random", "at most 1"]),
    "heads_not_dividing": _args("train.fa", "valid.fa", "--d_model=30", "--h=4",
                                fragments=["divisible", "--h", "--d_model"]),
    "noinput_linear_mismatch": _args("train.fa", "valid.fa", "--noinput_linear", "--d_model=16",
                                     "--n_kernels=32",
                                     fragments=["--noinput_linear", "--n_kernels", "--d_model"]),
    "bpe_without_file": _args("train.fa", "valid.fa", "--encoding_method=bpe",
                              fragments=["--bpe_file", "nlm_jax.bpe"]),
    "bpe_file_missing": _args("train.fa", "valid.fa", "--encoding_method=bpe", "--bpe_file=no.bpe",
                              fragments=["no.bpe", "does not exist"]),
    "bpe_file_corrupt": _args("train.fa", "valid.fa", "--encoding_method=bpe", "--bpe_file=train.fa",
                              fragments=["train.fa", "sentencepiece"]),
    "kmer_k_zero": _args("train.fa", "valid.fa", "--encoding_method=kmer", "--k=0",
                         fragments=["--k", "at least 1"]),
    "kmer_vocabulary_explodes": _args("train.fa", "valid.fa", "--encoding_method=kmer", "--k=14",
                                      fragments=["--k 14", "vocabulary", "parameters"]),
    "flagfile_missing": _args("train.fa", "valid.fa", "--flagfile=missing.flags",
                              fragments=["missing.flags"]),
    "flagfile_with_unknown_flag": _flagfile_with_unknown_flag,
    # Output folders that cannot be created (works as root too: a file is no folder).
    "results_parent_is_file": _results_parent_is_file,
    "model_parent_is_file": _model_parent_is_file,
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_bad_input_is_one_line_error(tmp_path, case):
  good_files(tmp_path)
  args, fragments = ERROR_CASES[case](tmp_path)
  # Positional paths first, then the tiny config, then the case's flags (the last one wins).
  positional = [a for a in args if not a.startswith("--")]
  flag_args = [a for a in args if a.startswith("--")]
  before = snapshot(tmp_path)
  proc = run_pretrain(tmp_path, *positional, *TINY, *flag_args)
  assert_one_line_error(proc, fragments)
  assert_unchanged(before, snapshot(tmp_path))


@pytest.mark.parametrize("which", ["results", "model"])
def test_read_only_parent_folder_is_one_line_error(tmp_path, which):
  if os.geteuid() == 0:
    pytest.skip("root ignores permissions (results/model_parent_is_file cover root)")
  good_files(tmp_path)
  locked = tmp_path / "locked"
  locked.mkdir()
  locked.chmod(0o555)
  try:
    before = snapshot(tmp_path)
    proc = run_pretrain(tmp_path, "train.fa", "valid.fa", *TINY, f"--{which}_dir=locked/out")
    assert_one_line_error(proc, [f"{which} folder", "locked", f"--{which}_dir"])
    assert_unchanged(before, snapshot(tmp_path))
  finally:
    locked.chmod(0o755)


def test_model_folder_with_checkpoint_is_one_line_error(tmp_path):
  good_files(tmp_path)
  command = ["train.fa", "valid.fa", *TINY]
  assert_trains(run_pretrain(tmp_path, *command), tmp_path)
  before = snapshot(tmp_path)
  assert any(name.startswith(os.path.join("M", EXP, "")) for name in before[0])
  proc = run_pretrain(tmp_path, *command)
  assert_one_line_error(proc, ["already holds a checkpoint", os.path.join("M", EXP),
                               "--model_dir"])
  assert_unchanged(before, snapshot(tmp_path))


# ---------------------------------------------------------------------- handled cases


def test_sequences_shorter_than_a_kernel_train(tmp_path):
  # kernel_size 3: lengths 1 and 2 fill less than one kernel, mixed with normal sequences.
  short = ["A", "CG", "T", "GA", "C", "TT"]
  write_fasta(tmp_path / "train.fa", short + random_seqs(20, 20, 80, seed=6), "train")
  write_fasta(tmp_path / "valid.fa", short[::-1] + random_seqs(10, 20, 80, seed=7), "valid")
  assert_trains(run_pretrain(tmp_path, "train.fa", "valid.fa", *TINY), tmp_path)


def _odd_letters(seqs, seed):
  """Every third nucleotide replaced by lowercase, U, N, an IUPAC code or a gap."""
  rng = np.random.default_rng(seed)
  odd = list("acgtuUNnRYKMSWBDHVrykm-.")
  out = []
  for s in seqs:
    s = list(s)
    for j in range(0, len(s), 3):
      s[j] = str(rng.choice(odd))
    out.append("".join(s))
  return out


def test_lowercase_u_n_iupac_and_gaps_train(tmp_path):
  train = _odd_letters(random_seqs(20, 20, 80, seed=8), seed=9)
  valid = _odd_letters(random_seqs(10, 20, 80, seed=10), seed=11)
  write_fasta(tmp_path / "train.fa", train, "train", width=30)
  write_fasta(tmp_path / "valid.fa", valid, "valid")
  # The reader maps them as fasta.py says: lower case, U is T, anything else is N.
  from nlm_jax import fasta as fasta_lib
  fa = fasta_lib.Fasta(str(tmp_path / "train.fa"))
  code = {"A": 0, "C": 1, "G": 2, "T": 3, "U": 3}
  for i, s in enumerate(train):
    expected = [code.get(c.upper(), fasta_lib.N) for c in s]
    np.testing.assert_array_equal(fa.codes(i), expected)
  assert_trains(run_pretrain(tmp_path, "train.fa", "valid.fa", *TINY), tmp_path)


def test_gzipped_training_fasta_trains(tmp_path):
  good_files(tmp_path)
  plain = (tmp_path / "train.fa").read_bytes()
  (tmp_path / "train.fa.gz").write_bytes(gzip.compress(plain))
  (tmp_path / "train.fa").unlink()
  assert_trains(run_pretrain(tmp_path, "train.fa.gz", "valid.fa", *TINY), tmp_path)


def test_windows_line_endings_train(tmp_path):
  train = random_seqs(20, 20, 80, seed=12)
  valid = random_seqs(10, 20, 80, seed=13)
  write_fasta(tmp_path / "train.fa", train, "train", newline="\r\n", width=30)
  write_fasta(tmp_path / "valid.fa", valid, "valid", newline="\r\n", width=30)
  assert b"\r\n" in (tmp_path / "train.fa").read_bytes()
  # '\r' must not end up in the sequences (as N) nor in their lengths.
  from nlm_jax import fasta as fasta_lib
  fa = fasta_lib.Fasta(str(tmp_path / "train.fa"))
  np.testing.assert_array_equal(fa.lengths, [len(s) for s in train])
  for i, s in enumerate(train):
    np.testing.assert_array_equal(fa.codes(i), fasta_lib.encode(s))
  assert fa.name(0) == "train_0"
  assert_trains(run_pretrain(tmp_path, "train.fa", "valid.fa", *TINY), tmp_path)
