"""Bad input to the commands ends in one line on stderr: the project's catalogue.

Commands: `python -m nlm_jax.pretrain` (pretrain-cli.md) and `python -m nlm_jax.bpe`.
The rule: bad input gets ONE line on stderr, `nlm_jax.pretrain: error: <problem>: <fix>`
(or `nlm_jax.bpe: error: ...`), a non-zero exit status, no traceback, and leaves everything
that was on disk as it was (no file created, changed or removed; a new, empty folder is
tolerated). Legal but odd input (short sequences, IUPAC letters, gzip, CRLF) is handled
instead: the run finishes and writes finite numbers. A finished run's model folder, run
again with the same command, is resumed: there is nothing to do and nothing changes.

Every case runs the real command in a process of its own, in its own tmp_path with
generated FASTA files: forked from the command server (conftest.run_command), which has
imported JAX already, and for one case of each kind (FRESH) afresh as well, which must
write the same. Most error cases end before JAX is used (~0.1 s); the FASTA and folder
checks happen after (~0.3 s); five runs train the tiny model below (~3 s each on a CPU),
one of them once for every test that needs a finished model folder.

Cases marked xfail(strict=True) are bugs: the command breaks the rule there.
"""

import csv
import gzip
import hashlib
import importlib.util
import io
import math
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import random_seqs, run_command, write_fasta

PREFIX = "nlm_jax.pretrain: error:"
BPE_PREFIX = "nlm_jax.bpe: error:"
EXP = "MLM_conv_nm16_sm3_dm16_N1_h2_bs8_ws2_cl8_d0"  # the experiment name of TINY
TINY = ["--d_model=16", "--N=1", "--h=2", "--n_kernels=16", "--kernel_size=3",
        "--context_length=8", "--batch_size=8", "--epochs=1", "--n_samples_per_epoch=16",
        "--warmup_steps=2", "--results_dir=R", "--model_dir=M"]
COLUMNS = ("Loss|train", "Accuracy|train", "Loss|valid", "Accuracy|valid")


# ---------------------------------------------------------------------------- helpers


def good_files(tmp_path):
  """train.fa and valid.fa: random ACGT that the tiny config trains on."""
  write_fasta(tmp_path / "train.fa", random_seqs(24, 20, 80, seed=1), "train")
  write_fasta(tmp_path / "valid.fa", random_seqs(16, 20, 80, seed=2), "valid")


def run_module(module, tmp_path, *args, timeout=300, env=None, fresh=False, limits=None):
  """`python -m module args` in tmp_path (conftest.run_command: forked from the command
  server unless `fresh` or `env`); `env` adds to (or overrides) the environment, `limits`
  are resource limits set before it starts."""
  return run_command(module, tmp_path, *args, timeout=timeout, env=env, fresh=fresh,
                     limits=limits)


def run_pretrain(tmp_path, *args, timeout=300, env=None, fresh=False, limits=None):
  return run_module("nlm_jax.pretrain", tmp_path, *args, timeout=timeout, env=env, fresh=fresh,
                    limits=limits)


def run_bpe(tmp_path, *args, timeout=120, fresh=False):
  return run_module("nlm_jax.bpe", tmp_path, *args, timeout=timeout, fresh=fresh)


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


def assert_same_contents(before, after):
  """The same files with the same bytes and modes; times may differ (rewritten as they were)."""
  files0, files1 = before[0], after[0]
  assert sorted(files0) == sorted(files1), (sorted(set(files1) ^ set(files0)))
  changed = sorted(p for p in files0 if (files0[p][0], files0[p][1], files0[p][3]) !=
                   (files1[p][0], files1[p][1], files1[p][3]))
  assert not changed, f"changed files: {changed}"
  assert sorted(before[1]) == sorted(after[1]), sorted(set(before[1]) ^ set(after[1]))


def assert_one_line_error(proc, fragments, prefix=PREFIX, progress=()):
  """One line on stderr starting with `prefix` and holding every fragment. stdout must be
  empty, except for lines starting with one of `progress` (printed before the problem
  showed: nlm_jax.bpe announces the fit before sentencepiece judges VOCAB_SIZE)."""
  both = proc.stdout + proc.stderr
  assert "Traceback" not in both, both
  assert proc.returncode != 0, both
  other = [l for l in proc.stdout.splitlines() if l.strip() and not l.startswith(tuple(progress))]
  assert not other, f"stdout should be empty:\n{proc.stdout}"
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{proc.stderr}"
  line = lines[0]
  assert line.startswith(prefix), line
  for fragment in fragments:
    assert fragment in line, f"{fragment!r} missing from: {line}"
  from test_messages import flags_of, named_flags  # the message walk's dynamic half

  command = prefix.split(":")[0].removeprefix("nlm_jax.")
  foreign = [name for name in named_flags(line) if name not in flags_of(command)]
  assert not foreign, f"nlm_jax.{command} has no flag {foreign}, which its message names: {line}"


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


def _nothing_to_predict(which, seq):
  def case(tmp):
    (tmp / "nothing.fa").write_bytes(b"".join(b">r%d\n%s\n" % (i, seq) for i in range(12)))
    what = {"train": "training", "valid": "validation"}[which]
    args = ["nothing.fa", "valid.fa"] if which == "train" else ["train.fa", "nothing.fa"]
    return args, [what, "'nothing.fa'", "no A, C, G, T or U", "nothing to predict"]
  return case


def _targets_beyond_window(tmp):
  # Evaluation windows are the 5' start (21 nt for TINY): only N there, an A after it.
  (tmp / "late.fa").write_text("".join(f">r{i}\n{'N' * 30}A\n" for i in range(12)))
  return ["train.fa", "late.fa"], ["validation set", "'late.fa'", "no position to predict"]


def _nul_byte(tmp):
  data = (tmp / "train.fa").read_bytes()
  (tmp / "nul.fa").write_bytes(data[:200] + b"\0" + data[200:])
  return ["nul.fa", "valid.fa"], ["'nul.fa'", "NUL byte", "line"]


def _cr_only(tmp):
  (tmp / "mac.fa").write_bytes((tmp / "train.fa").read_bytes().replace(b"\n", b"\r"))
  return ["mac.fa", "valid.fa"], ["'mac.fa'", "CR alone", "LF"]


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


def _fit_bpe(tmp, name="fit.bpe"):
  """A 30-piece model fitted on train.fa by nlm_jax.bpe itself (a few milliseconds)."""
  from nlm_jax import bpe

  bpe.fit(str(tmp / "train.fa"), 30, str(tmp / name))
  return tmp / name


def _bpe_file_truncated(tmp):
  data = _fit_bpe(tmp).read_bytes()
  (tmp / "cut.bpe").write_bytes(data[:len(data) // 2])
  return (["train.fa", "valid.fa", "--encoding_method=bpe", "--bpe_file=cut.bpe"],
          ["BPE file", "'cut.bpe'", "sentencepiece", "nlm_jax.bpe"])


def _train_sentencepiece(path, sentences, vocab_size=30, **kwargs):
  import sentencepiece as spm

  model = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=model,
                                 vocab_size=vocab_size, model_type="bpe", minloglevel=2, **kwargs)
  path.write_bytes(model.getvalue())


def _bpe_file_other_special_ids(tmp):
  # sentencepiece's defaults: UNK 0, BOS 1, EOS 2, no PAD, no MASK.
  seqs = random_seqs(40, 30, 60, seed=14)
  _train_sentencepiece(tmp / "default.bpe", seqs)
  return (["train.fa", "valid.fa", "--encoding_method=bpe", "--bpe_file=default.bpe"],
          ["'default.bpe'", "special ids", "nlm_jax.bpe"])


def _bpe_file_without_nucleotides(tmp):
  # The right special ids, but fitted on words: no piece is made of A, C, G, T alone.
  words = ["hello world the quick brown fox jumps over the lazy dog"] * 20
  _train_sentencepiece(tmp / "words.bpe", words, vocab_size=40, control_symbols=["MASK"],
                       unk_id=4, bos_id=1, eos_id=2, pad_id=3, add_dummy_prefix=False)
  return (["train.fa", "valid.fa", "--encoding_method=bpe", "--bpe_file=words.bpe"],
          ["'words.bpe'", "nucleotide"])


def _flagfile(text, fragments):
  def case(tmp):
    (tmp / "run.flags").write_text(text)
    return ["train.fa", "valid.fa", "--flagfile=run.flags"], fragments
  return case


def _flagfile_folder(tmp):
  (tmp / "launch.flags").mkdir()
  return ["train.fa", "valid.fa", "--flagfile=launch.flags"], ["flagfile", "launch.flags"]


def _config_json_not_json(tmp):
  (tmp / "M" / EXP).mkdir(parents=True)
  (tmp / "M" / EXP / "config.json").write_bytes(b"\x00garbage{{{ not json\n")
  return (["train.fa", "valid.fa"],
          [os.path.join("M", EXP, "config.json"), "cannot be read", "--fresh"])


def _flagfile_bytes(data, fragments, nested=False):
  """A flagfile that is no UTF-8 text (latin-1, binary), named directly or from another."""
  def case(tmp):
    (tmp / "bad.flags").write_bytes(data)
    (tmp / "run.flags").write_text("--epochs=1\n--flagfile=bad.flags\n")
    return ["train.fa", "valid.fa", f"--flagfile={'run' if nested else 'bad'}.flags"], fragments
  return case


PROTEIN = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVVHSLAKWKRQTLGQ"


def _protein(which):
  def case(tmp):
    write_fasta(tmp / "protein.fa", [PROTEIN[i:] for i in range(20)], "p")
    what = {"train": "training", "valid": "validation"}[which]
    args = ["protein.fa", "valid.fa"] if which == "train" else ["train.fa", "protein.fa"]
    return args, [what, "'protein.fa'", "not nucleotide sequences", "'L'", "protein"]
  return case


def _symbols(tmp):
  (tmp / "symbols.fa").write_text("".join(f">s{i}\n{'ACGT*X?#' * 5}\n" for i in range(12)))
  return ["symbols.fa", "valid.fa"], ["'symbols.fa'", "not nucleotide sequences", "50%"]


def lncrnapy_folder_of_tiny(folder, damage=None):
  """lncRNA-Py's save_pretrained folder of TINY's architecture (random weights); `damage`
  edits its (tensors, config) first."""
  import json

  import jax
  from safetensors.numpy import save_file

  from nlm_jax import folders, layout, model as model_lib
  from nlm_jax.config import Config

  cfg = Config("t", "v", d_model=16, N=1, h=2, n_kernels=16, kernel_size=3, context_length=8)
  params = model_lib.build(cfg).init(jax.random.key(0), model_lib.dummy_inputs(cfg))["params"]
  tensors, stored = layout.to_tensors(cfg, jax.device_get(params)), folders.lncrnapy_config(cfg)
  if damage:
    damage(tensors, stored)
  os.makedirs(folder)
  save_file(tensors, os.path.join(folder, "model.safetensors"))
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(stored, f)
  return folder


def _init_from(damage, fragments):
  def case(tmp):
    lncrnapy_folder_of_tiny(tmp / "L", damage)
    return ["train.fa", "valid.fa", "--init_from=L"], ["--init_from", "'L"] + fragments
  return case


def _nan(tensors, _):
  tensors["base_arch.encoder.norm.weight"] = np.where(np.arange(16) == 3, np.nan, 1).astype(np.float32)


def _string_number(_, stored):
  stored["base_arch_config"]["N"] = "1"


def _wrong_shape(tensors, _):
  tensors["base_arch.encoder.layers.0.2.lin_1.weight"] = np.zeros((32, 16), np.float32)


def _init_from_truncated(tmp):
  lncrnapy_folder_of_tiny(tmp / "L")
  data = (tmp / "L" / "model.safetensors").read_bytes()
  (tmp / "L" / "model.safetensors").write_bytes(data[:len(data) // 2])
  return ["train.fa", "valid.fa", "--init_from=L"], ["--init_from", "model.safetensors",
                                                     "cannot be read", "download the folder"]


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
    # Nothing to predict: a run would report Loss 0.0000, Accuracy 0.0000.
    "train_only_n": _nothing_to_predict("train", b"NNNNNNNNNNNNNNNNNNNNNNNN"),
    "valid_only_gaps": _nothing_to_predict("valid", b"------....------"),
    "valid_targets_beyond_the_window": _targets_beyond_window,
    "fasta_nul_byte": _nul_byte,
    "fasta_is_a_device": _args("/dev/zero", "valid.fa",
                               fragments=["'/dev/zero'", "no regular file", "save it to a file"]),
    "fasta_cr_only_line_ends": _cr_only,
    "data_dir_without_files": _data_dir_without_files,
    # Positional arguments and flags.
    "one_path": _args("train.fa", fragments=["expected two FASTA paths", "got 1"]),
    "three_paths": _args("train.fa", "valid.fa", "valid.fa",
                         fragments=["expected two FASTA paths", "got 3"]),
    "unknown_flag": _args("train.fa", "valid.fa", "--no_such_flag",
                          fragments=["no_such_flag", "--help"]),
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
    "bpe_file_truncated": _bpe_file_truncated,
    "bpe_file_other_special_ids": _bpe_file_other_special_ids,
    "bpe_file_without_nucleotide_pieces": _bpe_file_without_nucleotides,
    "precision_not_a_choice": _args("train.fa", "valid.fa", "--precision=fp16",
                                    fragments=["--precision", "fp16", "auto|fp32|bf16"]),
    "attention_not_a_choice": _args("train.fa", "valid.fa", "--attention=flash",
                                    fragments=["--attention", "flash", "xla"]),
    "checkpoint_every_steps_negative": _args("train.fa", "valid.fa", "--checkpoint_every_steps=-1",
                                             fragments=["--checkpoint_every_steps", "-1"]),
    # Flagfiles.
    "flagfile_missing": _args("train.fa", "valid.fa", "--flagfile=missing.flags",
                              fragments=["missing.flags"]),
    "flagfile_with_unknown_flag": _flagfile_with_unknown_flag,
    "flagfile_with_bad_value": _flagfile("--d_model=16\n--epochs=abc\n", ["--epochs", "abc"]),
    # absl keeps everything after '=' (a trailing comment too) as the value.
    "flagfile_with_trailing_comment": _flagfile("--epochs=2 # two\n", ["--epochs", "2 # two"]),
    "flagfile_is_folder": _flagfile_folder,
    # A model folder whose config.json is damaged (the tiny config's experiment name).
    "config_json_not_json": _config_json_not_json,
    # Output folders that cannot be created (works as root too: a file is no folder).
    "results_parent_is_file": _results_parent_is_file,
    "model_parent_is_file": _model_parent_is_file,
    # Output folders under a path that cannot exist (/proc refuses new folders, even to root).
    "results_and_model_under_proc": _args("train.fa", "valid.fa", "--results_dir=/proc/nope",
                                          "--model_dir=/proc/nope",
                                          fragments=["results folder", "/proc/nope",
                                                     "--results_dir"]),
    "model_under_proc": _args("train.fa", "valid.fa", "--model_dir=/proc/nope",
                              fragments=["model folder", "/proc/nope", "--model_dir"]),
    # Numeric flags out of their range, refused before anything starts.
    "seed_negative": _args("train.fa", "valid.fa", "--seed=-1",
                           fragments=["--seed", "[0, 4294967295]", "got -1"]),
    "seed_beyond_32_bits": _args("train.fa", "valid.fa", "--seed=1099511627776",
                                 fragments=["--seed", "got 1099511627776"]),
    "cpu_devices_far_too_many": _args("train.fa", "valid.fa", "--cpu_devices=100000",
                                      fragments=["--cpu_devices", "100000", "[0, 256]"]),
    "n_samples_per_epoch_too_many": _args("train.fa", "valid.fa",
                                          "--n_samples_per_epoch=10000000000000",
                                          fragments=["--n_samples_per_epoch", "[1, 100000000]"]),
    "steps_beyond_the_step_counter": _args("train.fa", "valid.fa", "--epochs=2000000000",
                                           fragments=["--epochs", "4,000,000,000 steps",
                                                      "lower --epochs"]),
    "dropout_not_a_number": _args("train.fa", "valid.fa", "--dropout=nan",
                                  fragments=["--dropout", "nan"]),
    "warmup_steps_beyond_int32": _args("train.fa", "valid.fa", "--warmup_steps=3000000000",
                                       fragments=["--warmup_steps", "3000000000"]),
    "num_processes_zero": _args("train.fa", "valid.fa", "--distributed", "--num_processes=0",
                                fragments=["--num_processes", "0"]),
    "model_too_large_for_memory": _args("train.fa", "valid.fa", "--d_model=100000",
                                        "--n_kernels=100000",
                                        fragments=["parameters need", "GiB",
                                                   "lower --d_model, --N or --d_ff"]),
    "flagfile_latin1": _flagfile_bytes(b"--epochs=1\n--exp_prefix=caf\xe9\n",
                                       ["flagfile 'bad.flags'", "UTF-8", "0xe9", "line 2"]),
    "flagfile_binary": _flagfile_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe", ["'bad.flags'", "UTF-8"]),
    "nested_flagfile_latin1": _flagfile_bytes(b"--exp_prefix=\xe9t\xe9\n",
                                              ["'bad.flags'", "UTF-8", "line 1"], nested=True),
    # Data that is not nucleotides: its letters would all be read as N.
    "protein_training_fasta": _protein("train"),
    "protein_validation_fasta": _protein("valid"),
    "mostly_symbols": _symbols,
    # A damaged --init_from folder: refused before the run's folders are made.
    "init_from_nan_weights": _init_from(_nan, ["NaN or infinite", "encoder/final_norm/scale"]),
    "init_from_string_for_a_number": _init_from(_string_number, ["'N' in base_arch_config",
                                                                 '"1"', "whole number"]),
    "init_from_tensor_of_another_shape": _init_from(_wrong_shape, ["lin_1.weight",
                                                                   "of shape (32, 16)"]),
    "init_from_truncated_weights": _init_from_truncated,
    # A batch that could never fit: refused before XLA tries.
    "batch_size_far_too_large": _args("train.fa", "valid.fa", "--batch_size=100000000",
                                      fragments=["rows of 8 positions per device need at least", "GiB",
                                                 "lower --batch_size (or --context_length)"]),
}


# Bugs: the command breaks the rule for these cases (see each reason).
XFAIL: dict[str, str] = {}

# Cases also run afresh (Python's start, the allocator's re-exec and the imports included),
# one of each kind: refused while parsing flags, by the Config, by a FASTA check and a
# folder check after JAX is imported, by a BPE file, before a batch that cannot fit. The
# forked process must write exactly what the fresh one writes.
FRESH = ("unknown_flag", "one_path", "heads_not_dividing", "empty_file", "text_not_fasta",
         "model_parent_is_file", "bpe_file_truncated", "batch_size_far_too_large")


def assert_same_as_fresh(forked, module, tmp_path, *args):
  fresh = run_module(module, tmp_path, *args, fresh=True)
  assert (forked.returncode, forked.stdout, forked.stderr) == (
      fresh.returncode, fresh.stdout, fresh.stderr), (forked, fresh)


def _cases(cases, xfail):
  """Parameters; a known bug must fail the test's assertions (anything else is an error)."""
  return [pytest.param(c, marks=pytest.mark.xfail(strict=True, raises=AssertionError,
                                                  reason=xfail[c]))
          if c in xfail else c for c in cases]


@pytest.mark.parametrize("case", _cases(ERROR_CASES, XFAIL))
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
  if case in FRESH:
    assert_same_as_fresh(proc, "nlm_jax.pretrain", tmp_path, *positional, *TINY, *flag_args)
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


def test_batch_size_not_divisible_by_devices_is_one_line_error(tmp_path):
  good_files(tmp_path)
  before = snapshot(tmp_path)
  proc = run_pretrain(tmp_path, "train.fa", "valid.fa", *TINY, "--batch_size=7",
                      env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
  assert_one_line_error(proc, ["--batch_size 7", "not divisible by the 2 devices"])
  assert_unchanged(before, snapshot(tmp_path))


@pytest.mark.parametrize("env, limits, fragments", [
    # Variables JAX reads when it starts (any but XLA_FLAGS: the command runs afresh).
    ({"JAX_PLATFORMS": "gpu"}, None, ["JAX_PLATFORMS='gpu'", "unset JAX_PLATFORMS"]),
    ({"JAX_PLATFORMS": "cpux"}, None, ["JAX_PLATFORMS='cpux'", "unset JAX_PLATFORMS"]),
    ({"JAX_ENABLE_X64": "maybe"}, None, ["JAX_ENABLE_X64='maybe'", "fix or unset"]),
    ({"XLA_FLAGS": "--xla_force_host_platform_device_count=0"}, None,
     ["XLA_FLAGS", "xla_force_host_platform_device_count=0", "at least 1"]),
    # Resource limits, as `ulimit -n 16` and `ulimit -f` (512 bytes) before the command.
    (None, {"RLIMIT_NOFILE": (16, 16)}, ["only 16 files", "ulimit -n", "at least 256"]),
    (None, {"RLIMIT_FSIZE": (512, 512)}, ["file-size limit", "ulimit -f", "File too large"]),
], ids=["jax_platforms_gpu", "jax_platforms_typo", "jax_enable_x64_not_a_bool",
        "xla_device_count_zero", "ulimit_open_files", "ulimit_file_size"])
def test_bad_environment_is_one_line_error(tmp_path, env, limits, fragments):
  good_files(tmp_path)
  before = snapshot(tmp_path)
  proc = run_pretrain(tmp_path, "train.fa", "valid.fa", *TINY, env=env, limits=limits)
  assert_one_line_error(proc, fragments)
  assert_unchanged(before, snapshot(tmp_path))


def test_libraries_installed_under_a_folder_named_nlm_jax_stay_quiet(tmp_path):
  """A clone named nlm_jax with the venv inside it puts "nlm_jax" in every library's path:
  library log lines must still be held back (they are told apart by logger name)."""
  good_files(tmp_path)
  site = os.path.dirname(importlib.util.find_spec("jax").submodule_search_locations[0])
  venv = tmp_path / "clone" / "nlm_jax" / ".venv"
  venv.mkdir(parents=True)
  (venv / "site-packages").symlink_to(site)
  env = {"PYTHONPATH": str(venv / "site-packages")}
  where = subprocess.run([sys.executable, "-c", "import importlib.util as u; "
                          "print(u.find_spec('orbax').submodule_search_locations[0])"],
                         env=dict(os.environ, **env), capture_output=True, text=True)
  assert where.stdout.startswith(str(venv)), where.stdout + where.stderr
  proc = run_pretrain(tmp_path, "nope.fa", "valid.fa", *TINY, env=env)
  assert_one_line_error(proc, ["'nope.fa'", "does not exist"])
  # A run: only nlm_jax's own lines (orbax alone logs hundreds at INFO).
  proc = run_pretrain(tmp_path, "train.fa", "valid.fa", *TINY, env=env)
  assert_trains(proc, tmp_path)
  package = importlib.util.find_spec("nlm_jax").submodule_search_locations[0]
  ours = {n for n in os.listdir(package) if n.endswith(".py")}
  theirs = [l for l in proc.stderr.splitlines()
            if not (m := re.match(r"[IWEF]\d{4} [\d:.]+ +\d+ (\S+):\d+\] ", l)) or m[1] not in ours]
  assert not theirs, proc.stderr
  assert len(proc.stderr.splitlines()) < 10, proc.stderr


def test_second_run_into_the_same_model_folder_is_one_line_error(tmp_path):
  """The same command started twice: the second stops at once, naming the first."""
  good_files(tmp_path)
  args = ["train.fa", "valid.fa", *TINY, "--epochs=3"]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  first = subprocess.Popen([sys.executable, "-m", "nlm_jax.pretrain", *args], cwd=tmp_path,
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  lock = tmp_path / "M" / f"{EXP}.lock"
  deadline = time.monotonic() + 120
  while not (lock.exists() and lock.read_text()) and first.poll() is None:
    assert time.monotonic() < deadline, "the first run never took the lock"
    time.sleep(0.05)
  second = run_pretrain(tmp_path, *args, timeout=60)
  _, err = first.communicate(timeout=300)
  assert first.returncode == 0 and "Traceback" not in err, err
  assert_one_line_error(second, [os.path.join("M", EXP), f"in use by process {first.pid}",
                                 "--model_dir"])
  history_rows(tmp_path, epochs=3)
  assert not lock.exists()


@pytest.fixture
def small_disk(tmp_path):
  """A 600 kB tmpfs (root only): room for the first checkpoint of TINY, not the next."""
  disk = tmp_path / "disk"
  disk.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(disk)],
                    capture_output=True).returncode:
    pytest.skip("mounting a tmpfs needs root")
  yield disk
  subprocess.run(["umount", str(disk)], check=True)


def test_full_disk_is_one_line_error_and_leaves_no_temporary_files(tmp_path, small_disk):
  good_files(tmp_path)
  # Afresh: this is where libraries' late writes (at exit) once broke the one line.
  proc = run_pretrain(tmp_path, "train.fa", "valid.fa", *TINY, "--epochs=3",
                      "--model_dir=disk/M", "--results_dir=disk/R", fresh=True)
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  errors = [l for l in proc.stderr.splitlines() if not l.startswith("I")]  # progress lines
  assert len(errors) == 1 and errors[0].startswith(PREFIX), proc.stderr[-3000:]
  assert "free disk space" in errors[0] and "disk" in errors[0], errors[0]
  left = [os.path.join(d, n) for d, ds, fs in os.walk(small_disk) for n in ds + fs if "tmp" in n]
  assert not left, left
  assert not (small_disk / "M" / f"{EXP}.lock").exists()


# --------------------------------------------------------- a finished run's model folder


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """A folder where the tiny config ran its one epoch: train.fa, valid.fa, M/ and R/."""
  root = tmp_path_factory.mktemp("finished")
  good_files(root)
  assert_trains(run_pretrain(root, "train.fa", "valid.fa", *TINY), root)
  return root


def copy_run(finished, tmp_path):
  for name in ("train.fa", "valid.fa", "M", "R"):
    src = finished / name
    (shutil.copytree if src.is_dir() else shutil.copy2)(src, tmp_path / name)
  assert (tmp_path / "M" / EXP / "config.json").is_file()


def test_model_folder_with_other_settings_is_one_line_error(tmp_path, finished_run):
  copy_run(finished_run, tmp_path)
  before = snapshot(tmp_path)
  proc = run_pretrain(tmp_path, "train.fa", "valid.fa", *TINY, "--p_mlm=0.2")
  assert_one_line_error(proc, [os.path.join("M", EXP), "--p_mlm 0.15 -> 0.2", "--fresh",
                              "keep both runs", "--exp_prefix"])
  assert_unchanged(before, snapshot(tmp_path))


def test_identical_rerun_of_finished_run_does_nothing(tmp_path, finished_run):
  # The same command again resumes the finished run: all its epochs are done.
  copy_run(finished_run, tmp_path)
  before = snapshot(tmp_path)
  assert any(name.startswith(os.path.join("M", EXP, "")) for name in before[0])
  proc = run_pretrain(tmp_path, "train.fa", "valid.fa", *TINY)
  both = proc.stdout + proc.stderr
  assert proc.returncode == 0, both
  assert "Traceback" not in both, both
  assert "nothing to do" in proc.stderr, proc.stderr
  # config.json is rewritten (a resume may raise --epochs), with the same bytes.
  assert_same_contents(before, snapshot(tmp_path))


@pytest.mark.parametrize("which", ["train", "valid"])
def test_resume_with_another_fasta_under_the_same_name_is_one_line_error(tmp_path, finished_run,
                                                                         which):
  copy_run(finished_run, tmp_path)
  write_fasta(tmp_path / f"{which}.fa", random_seqs(24, 20, 80, seed=99), which)
  before = snapshot(tmp_path)
  proc = run_pretrain(tmp_path, "train.fa", "valid.fa", *TINY, "--epochs=2")
  what = {"train": "training", "valid": "validation"}[which]
  assert_one_line_error(proc, [f"the {what} FASTA", os.path.join("M", EXP), "--fresh"])
  assert_unchanged(before, snapshot(tmp_path))


def test_failed_first_start_does_not_block_the_next_command(tmp_path, finished_run):
  """A start that died before its first checkpoint (here: other settings, config.json and
  data.json only) leaves nothing to resume: the corrected command runs."""
  good_files(tmp_path)
  folder = tmp_path / "M" / EXP
  folder.mkdir(parents=True)
  config = (finished_run / "M" / EXP / "config.json").read_text()
  assert '"p_mlm": 0.15' in config
  (folder / "config.json").write_text(config.replace('"p_mlm": 0.15', '"p_mlm": 0.2'))
  (folder / "data.json").write_text('{"training": "1:00000000"}')
  assert_trains(run_pretrain(tmp_path, "train.fa", "valid.fa", *TINY), tmp_path)
  assert '"p_mlm": 0.15' in (folder / "config.json").read_text()


# ------------------------------------------------------------------------- nlm_jax.bpe
# Cases for `python -m nlm_jax.bpe FASTA VOCAB_SIZE [--bpe_file F] [--data_dir D]`, run in
# tmp with train.fa (24 records, 1,186 nt) there; arguments as given.


def _bpe_empty(tmp):
  (tmp / "empty.fa").write_bytes(b"")
  return ["empty.fa", "30"], ["'empty.fa'", "empty"]


def _bpe_text(tmp):
  (tmp / "notes.txt").write_text("These are my notes.\nACGT is not a header.\n")
  return ["notes.txt", "30"], ["'notes.txt'", "not FASTA", "'>'"]


def _bpe_folder(tmp):
  (tmp / "data.fa").mkdir()
  return ["data.fa", "30"], ["'data.fa'", "folder"]


def _bpe_parent_is_file(tmp):
  (tmp / "blocker").write_text("a regular file\n")
  return ["train.fa", "30", "--bpe_file=blocker/out.bpe"], ["blocker", "--bpe_file"]


BPE_CASES = {
    "fasta_missing": _args("nope.fa", "30", fragments=["'nope.fa'", "does not exist"]),
    "fasta_empty": _bpe_empty,
    "not_fasta": _bpe_text,
    "fasta_is_folder": _bpe_folder,
    "fasta_missing_under_data_dir": _args("train.fa", "30", "--data_dir=elsewhere",
                                          fragments=[os.path.join("elsewhere", "train.fa"),
                                                     "does not exist", "--data_dir"]),
    "vocab_size_not_a_number": _args("train.fa", "abc",
                                     fragments=["VOCAB_SIZE", "whole number", "'abc'"]),
    "vocab_size_too_small": _args("train.fa", "5", fragments=["VOCAB_SIZE 5", "too small", "9"]),
    "vocab_size_zero": _args("train.fa", "0", fragments=["VOCAB_SIZE 0", "too small"]),
    # absl reads "-3" as a flag named 3.
    "vocab_size_negative": _args("train.fa", "-3", fragments=["VOCAB_SIZE", "-3"]),
    "vocab_size_too_large": _args("train.fa", "100000",
                                  fragments=["VOCAB_SIZE 100000", "too large", "'train.fa'",
                                             "at most"]),
    "bpe_file_parent_is_file": _bpe_parent_is_file,
    "bpe_file_under_proc": _args("train.fa", "30", "--bpe_file=/proc/nope/out.bpe",
                                 fragments=["/proc/nope", "--bpe_file"]),
    "no_arguments": _args(fragments=["expected FASTA and VOCAB_SIZE"]),
    "one_argument": _args("train.fa", fragments=["expected FASTA and VOCAB_SIZE"]),
    "three_arguments": _args("train.fa", "30", "valid.fa",
                             fragments=["expected FASTA and VOCAB_SIZE"]),
    "unknown_flag": _args("train.fa", "30", "--no_such_flag=1", fragments=["no_such_flag"]),
    "protein_fasta": lambda tmp: (_protein("train")(tmp)[0][:1] + ["30"],
                                  ["'protein.fa'", "not nucleotide sequences", "protein"]),
    "flagfile_latin1": lambda tmp: (_flagfile_bytes(b"--bpe_file=\xe9.bpe\n", [])(tmp)[0][2:] +
                                    ["train.fa", "30"], ["flagfile 'bad.flags'", "UTF-8"]),
}

BPE_XFAIL: dict[str, str] = {}
BPE_FRESH = ("not_fasta", "vocab_size_not_a_number", "unknown_flag")  # as FRESH above


@pytest.mark.parametrize("case", _cases(BPE_CASES, BPE_XFAIL))
def test_bpe_bad_input_is_one_line_error(tmp_path, case):
  good_files(tmp_path)
  args, fragments = BPE_CASES[case](tmp_path)
  before = snapshot(tmp_path)
  proc = run_bpe(tmp_path, *args)
  assert_one_line_error(proc, fragments, prefix=BPE_PREFIX, progress=("fitting ", "  read "))
  assert_unchanged(before, snapshot(tmp_path))
  if case in BPE_FRESH:
    assert_same_as_fresh(proc, "nlm_jax.bpe", tmp_path, *args)
    assert_unchanged(before, snapshot(tmp_path))
  if case == "vocab_size_too_large":  # the maximum it names is the true one: that size fits
    high = int(re.search(r"at most (\d+)", proc.stderr).group(1))
    assert 9 <= high < 100000, proc.stderr
    fitted = run_bpe(tmp_path, "train.fa", str(high), "--bpe_file=max.bpe")
    assert fitted.returncode == 0 and (tmp_path / "max.bpe").is_file(), fitted.stderr


@pytest.mark.parametrize("where", ["bpe_file", "default"])
def test_bpe_existing_output_is_not_overwritten(tmp_path, where):
  good_files(tmp_path)
  path = tmp_path / ("mine.bpe" if where == "bpe_file" else os.path.join("features", "30.bpe"))
  path.parent.mkdir(exist_ok=True)
  content = b"my earlier model: not to be overwritten\n"
  path.write_bytes(content)
  before = snapshot(tmp_path)
  args = ["train.fa", "30"] + (["--bpe_file=mine.bpe"] if where == "bpe_file" else [])
  proc = run_bpe(tmp_path, *args)
  assert_one_line_error(proc, [f"{os.path.relpath(path, tmp_path)!r}", "already exists",
                               "--bpe_file"], prefix=BPE_PREFIX)
  assert path.read_bytes() == content
  assert_unchanged(before, snapshot(tmp_path))


def fill(disk):
  """Fills a small disk to the last byte."""
  with open(disk / "filler", "wb", buffering=0) as f:
    try:
      while True:
        f.write(b"\0" * 4096)
    except OSError:
      pass


def test_bpe_on_a_full_disk_is_one_line_error(tmp_path, small_disk):
  good_files(tmp_path)
  fill(small_disk)
  proc = run_bpe(tmp_path, "train.fa", "30", "--bpe_file=disk/out.bpe")
  assert_one_line_error(proc, ["'disk/out.bpe'", "free disk space", "--bpe_file"],
                        prefix=BPE_PREFIX, progress=("fitting ", "  read "))
  assert os.listdir(small_disk) == ["filler"]


@pytest.mark.parametrize("error, fragments", [
    # XLA's text for a device allocation that failed (GPU/TPU), and the host's MemoryError.
    (RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 80.00GiB."),
     ["out of memory", "80.00GiB", "lower --batch_size (or --context_length)"]),
    (MemoryError(), ["out of memory (MemoryError)", "lower --batch_size"]),
    (OSError(28, "No space left on device"), ["no space left on the disk", "free disk space"]),
])
def test_errors_from_below_are_one_line(capsys, error, fragments):
  from nlm_jax import cli

  with pytest.raises(SystemExit) as exit_:
    with cli.one_line_errors("nlm_jax.pretrain", "--batch_size (or --context_length)"):
      raise error
  assert exit_.value.code == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(PREFIX), lines
  for fragment in fragments:
    assert fragment in lines[0], lines[0]


def test_library_records_about_a_full_disk_are_dropped():
  import logging

  from nlm_jax import cli

  def record(name, message, exc=None):
    return logging.LogRecord(name, logging.ERROR, "x.py", 1, message, None,
                             (type(exc), exc, None) if exc else None)

  deep = ValueError("commit failed")
  deep.__context__ = OSError(28, "No space left on device")
  assert cli._says_disk_full(record("orbax", "Save Finalize thread failed", deep))
  assert cli._says_disk_full(record("asyncio", "RESOURCE_EXHAUSTED: [os_error_code='28']"))
  assert not cli._says_disk_full(record("orbax", "Failed to restore", ValueError("shape")))


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


def test_windows_line_endings_and_empty_lines_train(tmp_path):
  train = random_seqs(20, 20, 80, seed=12)
  valid = random_seqs(10, 20, 80, seed=13)
  write_fasta(tmp_path / "train.fa", train, "train", newline="\r\n", width=30)
  write_fasta(tmp_path / "valid.fa", valid, "valid", newline="\r\n", width=30)
  # An empty line after each header: pyfastx's slicing divided by zero there (SIGFPE).
  data = (tmp_path / "train.fa").read_bytes()
  (tmp_path / "train.fa").write_bytes(re.sub(rb"(>[^\r]*\r\n)", rb"\1\r\n", data))
  assert b"\r\n" in (tmp_path / "train.fa").read_bytes()
  # '\r' must not end up in the sequences (as N) nor in their lengths.
  from nlm_jax import fasta as fasta_lib
  fa = fasta_lib.Fasta(str(tmp_path / "train.fa"))
  np.testing.assert_array_equal(fa.lengths, [len(s) for s in train])
  for i, s in enumerate(train):
    np.testing.assert_array_equal(fa.codes(i), fasta_lib.encode(s))
  assert fa.name(0) == "train_0"
  assert_trains(run_pretrain(tmp_path, "train.fa", "valid.fa", *TINY), tmp_path)


def test_cpu_devices_that_do_not_divide_the_batch_is_one_line_error(tmp_path):
  # --cpu_devices reaches JAX (no device count in XLA_FLAGS): 3 devices cannot split 8 rows.
  good_files(tmp_path)
  before = snapshot(tmp_path)
  proc = run_pretrain(tmp_path, "train.fa", "valid.fa", *TINY, "--batch_size=8",
                      "--cpu_devices=3", env={"XLA_FLAGS": ""})
  assert_one_line_error(proc, ["--batch_size 8", "not divisible by the 3 devices",
                               "--cpu_devices"])
  assert_unchanged(before, snapshot(tmp_path))
