"""Fine-tuning and classification (nlm_jax.finetune, nlm_jax.classify, Model.classify):
the metrics and the loss against their definitions, the two-class sampler, freezing, the
flags a pre-trained model brings, and a tiny model that learns a planted class
difference end to end."""

import csv
import json
import os
import shutil

import jax
import numpy as np
import pytest
from absl import flags

import nlm_jax
from conftest import signal_while_writing, write_fasta
from nlm_jax import classify, command, config, fasta as fasta_lib, model as model_lib, sampler, tasks, train
from nlm_jax.history import columns
from nlm_jax.config import Config, UserError
from test_bad_input import (assert_one_line_error, assert_same_as_fresh, assert_unchanged, run_module,
                            snapshot)

RUN_DEVICES = jax.devices()[:1]  # whole runs on one device (see test_train.py)
TINY = dict(d_model=32, n_kernels=32, N=1, h=4, kernel_size=3, context_length=32, batch_size=16,
            encoder_dropout=0.0)
MOTIF = "AAAAAAAAAAAAAAA"  # planted in every pcRNA, never in an ncRNA


def class_seqs(n, pc, seed):
  """Random sequences of 40-90 nt (within TINY's 93-nt window); a pcRNA holds MOTIF twice,
  an ncRNA is random."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    s = list(rng.choice(list("ACGT"), int(rng.integers(40, 91))))
    if pc:
      for start in rng.choice(len(s) - len(MOTIF), 2, replace=False):
        s[start:start + len(MOTIF)] = MOTIF
    out.append("".join(s))
  return out


def class_files(folder, n_pc=60, n_nc=40, n_valid=30):
  paths = []
  for split, (a, b), seed in (("train", (n_pc, n_nc), 1), ("valid", (n_valid, n_valid), 2)):
    paths.append(write_fasta(folder / f"pc_{split}.fa", class_seqs(a, True, seed), f"pc_{split}"))
    paths.append(write_fasta(folder / f"nc_{split}.fa", class_seqs(b, False, seed + 10), f"nc_{split}"))
  return paths[0], paths[1], paths[2], paths[3]  # pc_train, nc_train, pc_valid, nc_valid


# ---------------------------------------------------------------- metrics and loss


def sums_of(logits, labels, pos_weight=1.0):
  return {k: float(v) for k, v in model_lib.bce_loss(np.float32(logits), np.int8(labels),
                                                     pos_weight).items()}


def test_metrics_equal_sklearn_definitions_by_hand():
  y_true = [1, 1, 1, 0, 0, 1, 0, 0, 0, 1]
  y_pred = [1, 0, 1, 0, 1, 1, 0, 0, 1, 1]  # tp 4, fn 1, fp 2, tn 3
  logits = [2.0 if p else -2.0 for p in y_pred]
  got = tasks.classification_figures(sums_of(logits, y_true))
  want = {"Accuracy": 7 / 10, "Precision (pcRNA)": 4 / 6, "Recall (pcRNA)": 4 / 5,
          "Precision (ncRNA)": 3 / 4, "Recall (ncRNA)": 3 / 5,
          "F1 (macro)": (2 * 4 / (2 * 4 + 2 + 1) + 2 * 3 / (2 * 3 + 1 + 2)) / 2}
  for k, v in want.items():
    assert got[k] == pytest.approx(v, abs=1e-7), k
  # Everything called pcRNA: ncRNA precision is 0/0, which scikit-learn reports as 0.
  got = tasks.classification_figures(sums_of([1.0] * 4, [1, 0, 1, 1]))
  assert got["Precision (ncRNA)"] == 0.0 and got["Recall (ncRNA)"] == 0.0
  assert got["F1 (macro)"] == pytest.approx((2 * 3 / (6 + 1)) / 2)
  # P(pcRNA) = 0.5 exactly is pcRNA, as classify's rule.
  assert sums_of([0.0], [1])["tp"] == 1.0


def test_bce_loss_is_pytorch_bce_with_logits_and_pos_weight():
  logits = np.array([2.0, -1.0, 0.5, -3.0, 7.0], np.float32)
  labels = np.array([1, 0, 0, 1, -1])  # -1: a row that only fills the batch
  w = 0.25
  s = sums_of(logits, labels, w)
  sig = 1 / (1 + np.exp(-logits[:4].astype(np.float64)))
  y = labels[:4]
  want = np.mean(-(w * y * np.log(sig) + (1 - y) * np.log(1 - sig)))
  assert s["count"] == 4
  assert s["loss_sum"] / s["count"] == pytest.approx(want, rel=1e-6)


# ---------------------------------------------------------------- the two-class sampler


def test_two_classes_drawn_together_in_proportion_and_weighted_by_counts(tmp_path):
  pc = fasta_lib.Fasta(write_fasta(tmp_path / "pc.fa", ["A" * 50] * 30))
  nc = fasta_lib.Fasta(write_fasta(tmp_path / "nc.fa", ["C" * 50] * 10))
  source = sampler.TwoClass(pc, nc)
  assert source.pos_weight == 10 / 30
  cfg = Config("pc.fa", "pc.fa", task="cls", fasta_nc_train="nc.fa", fasta_nc_valid="nc.fa",
               n_samples_per_epoch=400, **TINY)
  s = sampler.TrainSampler(source, cfg, sampler.encoding_for(cfg))
  batches = list(s.epoch(0))
  labels = np.concatenate([b["labels"] for b in batches])
  inputs = np.concatenate([b["inputs"] for b in batches])
  assert len(labels) == 400 and labels.sum() == 300  # 10 whole permutations of 40 records
  first = inputs[:, :1][:, 0]  # A (0) for every pcRNA row, C (1) for every ncRNA row
  np.testing.assert_array_equal(first, np.where(labels == 1, fasta_lib.A, fasta_lib.C))
  # Rows that fill a short last batch carry the label -1, which the loss ignores.
  fill = sampler.encoding_for(cfg).empty_rows(3)
  np.testing.assert_array_equal(fill["labels"], [-1, -1, -1])


# ---------------------------------------------------------------- flags


def parse(*argv):
  fv = flags.FlagValues()
  config.define_flags(fv, task="cls")
  rest = fv(["finetune", *argv])
  return command.from_finetune_flags(fv, rest[1:])


FILES = ("pc.fa", "nc.fa", "pcv.fa", "ncv.fa")


@pytest.fixture
def pretrained_folder(tmp_path):
  """A folder with the config.json of a pre-trained conv model (JSON only: flags need no more)."""
  folder = tmp_path / "MLM"
  folder.mkdir()
  cfg = Config("t", "v", d_model=64, n_kernels=32, N=2, h=4, kernel_size=9, context_length=64)
  (folder / "config.json").write_text(cfg.to_json())
  return str(folder)


def test_finetune_defaults_are_the_originals():
  cfg = parse(*FILES)
  assert (cfg.task, cfg.exp_prefix, cfg.epochs, cfg.batch_size, cfg.learning_rate) == ("cls", "CLS", 100, 8, 1e-5)
  assert (cfg.weight_decay, cfg.kernel_size, cfg.dropout, cfg.hidden_cls_layers) == (0.0, 9, 0.0, ())
  assert (cfg.train_path, cfg.nc_train_path, cfg.valid_path, cfg.nc_valid_path) == FILES
  assert cfg.exp_name == "CLS_conv_nm768_sm9_dm768_N12_bs8_lr1e-05_wd0_cl768_d0"
  assert parse(*FILES, "--encoding_method=kmer", "--k=3", "--hidden_cls_layers=256,128",
               "--no_weighted_loss", "--no_random_reading_frame").exp_name == (
                   "CLS_kmer_k3_dm768_N12_bs8_lr1e-05_wd0_cl768_d0_hl256-128--no_weighted_loss--no_rrf")


def test_pretrained_model_brings_its_architecture(pretrained_folder):
  cfg = parse(*FILES, f"--pretrained_model={pretrained_folder}", "--freeze_network")
  assert (cfg.d_model, cfg.n_kernels, cfg.N, cfg.ff_dim, cfg.kernel_size) == (64, 32, 2, 256, 9)
  assert cfg.use_input_linear and cfg.pooling == "mean"
  assert cfg.exp_name == ("CLS_conv_finetuned_nm32_sm9_dm64_N2_dff256_h4_bs8_lr1e-05_wd0_cl768_d0"
                          "--freeze_network")
  # The context is the flag's, as in lncRNA-Py (the positions are sinusoidal).
  assert parse(*FILES, f"--pretrained_model={pretrained_folder}", "--context_length=16").context_length == 16
  # Flags that say what the model says are no conflict.
  assert parse(*FILES, f"--pretrained_model={pretrained_folder}", "--d_model=64").d_model == 64


@pytest.mark.parametrize("argv, fragment", [
    (("--encoding_method=kmer",), "--encoding_method 'kmer' differs from the model in --pretrained_model"),
    (("--kernel_size=10",), r"\(kernel_size 9\): drop --kernel_size"),
    (("--d_ff=128",), r"\(d_ff 256\)"),
])
def test_flags_that_contradict_the_pretrained_model_are_refused(pretrained_folder, argv, fragment):
  with pytest.raises(UserError, match=fragment):
    parse(*FILES, f"--pretrained_model={pretrained_folder}", *argv)


@pytest.mark.parametrize("argv, fragment", [
    (("--freeze_network",), "add --pretrained_model"),
    (("--freeze_kernels",), "add --pretrained_model"),
    (("--learning_rate=0",), "--learning_rate"),
    (("--hidden_cls_layers=a,b",), "comma-separated numbers"),
    (("--hidden_cls_layers=0",), "positive"),
    (("--pretrained_model=nowhere",), "--pretrained_model: model folder .nowhere. does not exist"),
])
def test_bad_finetune_flags(argv, fragment):
  with pytest.raises(UserError, match=fragment):
    parse(*FILES, *argv)


def test_a_classifier_is_no_pretrained_model(tmp_path):
  folder = tmp_path / "CLS"
  folder.mkdir()
  (folder / "config.json").write_text(Config("a", "b", task="cls").to_json())
  with pytest.raises(UserError, match="is a fine-tuned classifier, not a pre-trained model"):
    parse(*FILES, f"--pretrained_model={folder}")
  with pytest.raises(UserError, match="expected four FASTA paths"):
    parse("a.fa", "b.fa")


@pytest.mark.parametrize("flagfile, pretrain_flagfile, name", [
    ("finetune_conv.flags", "conv.flags",
     "CLS_FT_conv_finetuned_nm768_sm9_dm768_N12_dff3072_h12_bs8_lr1e-05_wd0_cl768_d0"),
    ("finetune_kmer.flags", "kmer.flags",
     "CLS_FT_kmer_finetuned_k3_dm768_N12_dff3072_h12_bs8_lr1e-05_wd0_cl768_d0"),
])
def test_published_recipes_fine_tune_the_pretrained_launch_models(tmp_path, flagfile,
                                                                  pretrain_flagfile, name):
  """The fine-tuning launch files, with the folder their pre-training launch file makes."""
  launch = os.path.join(os.path.dirname(__file__), "..", "launch")
  fv = flags.FlagValues()
  config.define_flags(fv)
  base = command.from_flags(fv, fv(["pretrain", "t", "v", f"--flagfile={launch}/{pretrain_flagfile}"])[1:])
  folder = tmp_path / base.exp_name
  folder.mkdir()
  (folder / "config.json").write_text(base.to_json())
  with open(os.path.join(launch, flagfile)) as f:
    assert f"--pretrained_model=models/{base.exp_name}" in f.read()
  cfg = parse(*FILES, f"--flagfile={launch}/{flagfile}", f"--pretrained_model={folder}")
  assert cfg.exp_name == name
  assert (cfg.epochs, cfg.learning_rate, cfg.batch_size, cfg.n_samples_per_epoch) == (100, 1e-5, 8, 10000)


# ---------------------------------------------------------------- freezing


@pytest.mark.parametrize("freeze", ["freeze_network", "freeze_kernels"])
def test_freezing_keeps_the_frozen_parameters_bit_identical(tmp_path, freeze):
  pc_t, nc_t, _, _ = class_files(tmp_path, 20, 20, 4)
  cfg = Config(pc_t, pc_t, task="cls", fasta_nc_train=nc_t, fasta_nc_valid=nc_t,
               learning_rate=1e-2, weight_decay=0.1, **{freeze: True}, **TINY)
  mesh = train.make_mesh(RUN_DEVICES)
  task = tasks.for_config(cfg)
  data = task.open_data()
  state = train.init_state(cfg, mesh, jax.random.key(0), task)
  before = jax.device_get(state.params)
  step = train.make_train_step(cfg, mesh, task)
  batches = sampler.TrainSampler(data.train, cfg, task.encoding)
  for i in range(3):
    state, _ = step(state, train.to_device(batches.batch(0, i), mesh), jax.random.key(1))
  after = jax.device_get(state.params)
  labels = tasks.freeze_labels(cfg, before)
  frozen = [a for a, lab in zip(jax.tree.leaves(before), jax.tree.leaves(labels)) if lab == "frozen"]
  assert frozen
  for (path, a), b, lab in zip(jax.tree_util.tree_leaves_with_path(before), jax.tree.leaves(after),
                               jax.tree.leaves(labels)):
    if lab == "frozen":
      np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
  assert not np.array_equal(before["output"]["kernel"], after["output"]["kernel"])
  if freeze == "freeze_kernels":  # only the conv kernels: the encoder trains
    assert set(labels["stem"]["conv"].values()) == {"frozen"}
    assert not np.array_equal(before["encoder"]["final_norm"]["scale"],
                              after["encoder"]["final_norm"]["scale"])
  else:
    assert set(jax.tree.leaves(labels["encoder"])) == {"frozen"}


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """A tiny model pre-trained on both classes' sequences, then fine-tuned to tell them apart."""
  tmp = tmp_path_factory.mktemp("finetune")
  files = class_files(tmp)
  seqs = class_seqs(60, True, 1) + class_seqs(40, False, 11)
  mixed = write_fasta(tmp / "mixed.fa", seqs)
  common = dict(model_dir=str(tmp / "M"), results_dir=str(tmp / "R"), **TINY)
  mlm = Config(mixed, mixed, epochs=1, n_samples_per_epoch=160, warmup_steps=10, **common)
  train.run(mlm, RUN_DEVICES)
  cls = Config(files[0], files[2], task="cls", fasta_nc_train=files[1], fasta_nc_valid=files[3],
               pretrained_model=mlm.checkpoint_path, epochs=3, n_samples_per_epoch=320,
               learning_rate=2e-3, **common)
  history = train.run(cls, RUN_DEVICES)
  return tmp, files, mlm, cls, history


def test_finetuning_a_pretrained_model_learns_the_planted_difference(runs):
  tmp, _, mlm, cls, history = runs
  assert len(history) == 3
  assert max(r["F1 (macro)|valid"] for r in history) > 0.9, history
  with open(os.path.join(cls.results_path, "history.csv")) as f:
    header = f.readline().strip().split(",")
  assert header[1:] == list(columns(tasks.CLS_FIGURES))
  assert header[1:3] == ["Loss|train", "Accuracy|train"] and "F1 (macro)|valid" in header
  assert os.path.getsize(os.path.join(cls.results_path, "f1_macro.png")) > 1000
  # Fine-tuning starts from the pre-trained stem and encoder, and a fresh head.
  fresh = train.init_state(cls, train.make_mesh(RUN_DEVICES), jax.random.key(0))
  start = jax.device_get(train.with_params_from(fresh, mlm.checkpoint_path, cls).params)
  fresh = jax.device_get(fresh.params)
  pre = jax.device_get(nlm_jax.load(mlm.checkpoint_path, devices=RUN_DEVICES).params)
  assert set(start) == {"stem", "encoder", "output"}
  for name in ("stem", "encoder"):
    for a, b in zip(jax.tree.leaves(start[name]), jax.tree.leaves(pre[name]), strict=True):
      np.testing.assert_array_equal(a, b)
  assert not np.array_equal(fresh["stem"]["conv"]["kernel"], pre["stem"]["conv"]["kernel"])
  np.testing.assert_array_equal(start["output"]["kernel"], fresh["output"]["kernel"])


def test_a_lncrnapy_pretrained_folder_fine_tunes_from_its_weights(runs, tmp_path):
  """--pretrained_model reads what --init_from reads: here lncRNA-Py's MaskedConvModel
  layout, made from the pre-trained model by the exporter (test_folders.py)."""
  from test_folders import lncrnapy_folder

  tmp, files, mlm, _, _ = runs
  pre = nlm_jax.load(mlm.checkpoint_path, devices=RUN_DEVICES)
  folder = lncrnapy_folder(tmp_path / "lncRNA-BERT", pre.cfg, pre.params)
  cfg = parse(*files, f"--pretrained_model={folder}", "--context_length=32", "--batch_size=16")
  assert (cfg.encoding_method, cfg.d_model, cfg.N, cfg.kernel_size) == ("conv", 32, 1, 3)
  assert cfg.exp_name.startswith("CLS_conv_finetuned_nm32_sm3_dm32_N1_dff128_h4_bs16_")
  start = train.with_params_from(train.init_state(cfg, train.make_mesh(RUN_DEVICES), jax.random.key(0)),
                                 folder, cfg)
  for a, b in zip(jax.tree.leaves(jax.device_get(start.params["encoder"])),
                  jax.tree.leaves(jax.device_get(pre.params["encoder"])), strict=True):
    np.testing.assert_allclose(a, b, atol=1e-7)


def test_classify_writes_every_record_and_agrees_with_the_model(runs, tmp_path):
  _, files, _, cls, _ = runs
  pc_valid, nc_valid = files[2], files[3]
  long_seq = class_seqs(1, True, 5)[0] * 3  # longer than the 93-nt context: several windows
  seqs = [*class_seqs(5, True, 3), *class_seqs(5, False, 4), long_seq, "ACGTN"]
  fa = write_fasta(tmp_path / "in.fa", seqs, "rec")
  p_out = classify.classify_fasta(cls.checkpoint_path, fa, str(tmp_path / "out.csv"), batch_size=8)
  n = len(p_out)
  with open(tmp_path / "out.csv") as f:
    rows = list(csv.reader(f))
  assert n == len(seqs) and rows[0] == ["id", "P(pcRNA)", "class"]
  assert [r[0] for r in rows[1:]] == [f"rec_{i}" for i in range(len(seqs))]
  p_csv = np.array([float(r[1]) for r in rows[1:]])
  assert [r[2] for r in rows[1:]] == ["pcRNA" if p >= 0.5 else "ncRNA" for p in p_csv]
  model = nlm_jax.load(cls.checkpoint_path, devices=RUN_DEVICES)
  p_api = model.classify(seqs)
  np.testing.assert_allclose(p_csv, p_api, atol=1e-6)  # 6 decimals, and 8 devices against 1
  np.testing.assert_allclose(p_out, p_csv, atol=1e-6)
  # Each window alone, as the model's forward pass gives it on full-context inputs; the long
  # sequence is the position-weighted mean of its windows' logits.
  short = seqs[:10]
  logits = np.asarray(model.module.apply({"params": model.params}, model.encode(short)))
  np.testing.assert_allclose(p_api[:10], 1 / (1 + np.exp(-logits)), atol=1e-5)
  w = cls.n_nucleotides
  pieces = [long_seq[i:i + w] for i in range(0, len(long_seq), w)]
  piece_logits = np.asarray(model.module.apply({"params": model.params}, model.encode(pieces)))
  weights = np.array([-(-len(p) // cls.kernel_size) for p in pieces])
  want = 1 / (1 + np.exp(-(piece_logits * weights).sum() / weights.sum()))
  assert p_api[10] == pytest.approx(want, abs=1e-5)
  truncated = model.classify([long_seq], long_sequences="truncate")
  assert truncated[0] == pytest.approx(1 / (1 + np.exp(-piece_logits[0])), abs=1e-5)
  # The validation pcRNAs are mostly called pcRNA, the ncRNAs mostly ncRNA.
  pc = model.classify([s for _, s in fasta_lib_records(pc_valid)])
  nc = model.classify([s for _, s in fasta_lib_records(nc_valid)])
  assert np.mean(pc >= 0.5) > 0.8 and np.mean(nc < 0.5) > 0.8


def fasta_lib_records(path):
  fa = fasta_lib.Fasta(path)
  return [(fa.name(i), "".join("ACGTN"[c] for c in fa.codes(i))) for i in range(len(fa))]


def test_exported_classifier_classifies_alike(runs, tmp_path):
  from nlm_jax import export

  _, files, _, cls, _ = runs
  out = export.export(cls.checkpoint_path, str(tmp_path / "exp"))
  from safetensors.numpy import load_file

  tensors = load_file(os.path.join(out, "model.safetensors"))
  assert tensors["output.weight"].shape == (1, 32) and tensors["output.bias"].shape == (1,)
  assert not any(k.startswith(("linear", "transposed", "mlm")) for k in tensors)
  seqs = [s for _, s in fasta_lib_records(files[2])][:6]
  np.testing.assert_allclose(nlm_jax.load(out, devices=RUN_DEVICES).classify(seqs),
                             nlm_jax.load(cls.checkpoint_path, devices=RUN_DEVICES).classify(seqs),
                             atol=1e-6)


def test_a_lncrnapy_classifier_folder_classifies_alike(runs, tmp_path):
  """The export renamed to what lncRNA-Py's Classifier.save_pretrained writes (config.json
  with pooling and hidden_layers, no nlm_jax.json): nlm_jax.load and nlm_jax.classify read
  it, with --context_length giving the windows lncRNA-Py's folder does not store."""
  from nlm_jax import export

  _, files, _, cls, _ = runs
  folder = export.export(cls.checkpoint_path, str(tmp_path / "lncRNA-BERT-finetuned"))
  os.remove(os.path.join(folder, "nlm_jax.json"))
  with open(os.path.join(folder, "config.json")) as f:
    stored = json.load(f)
  assert (stored["pooling"], stored["hidden_layers"]) == ("CLS", [])
  seqs = [s for _, s in fasta_lib_records(files[2])][:6]
  want = nlm_jax.load(cls.checkpoint_path, devices=RUN_DEVICES).classify(seqs)
  loaded = nlm_jax.load(folder, devices=RUN_DEVICES, context_length=cls.context_length)
  assert loaded.cfg.is_classifier and loaded.cfg.hidden_cls_layers == ()
  np.testing.assert_array_equal(loaded.classify(seqs), want)
  write_fasta(tmp_path / "in.fa", seqs)
  proc = run_module("nlm_jax.classify", tmp_path, folder, "in.fa", "out.csv",
                    f"--context_length={cls.context_length}")
  assert proc.returncode == 0, proc.stderr
  with open(tmp_path / "out.csv") as f:
    p_csv = np.array([float(r[1]) for r in list(csv.reader(f))[1:]])
  np.testing.assert_allclose(p_csv, want, atol=5e-7)


def test_a_pretrained_model_does_not_classify_and_a_classifier_does_not_unmask(runs):
  _, _, mlm, cls, _ = runs
  with pytest.raises(UserError, match="fine-tune it first"):
    nlm_jax.load(mlm.checkpoint_path, devices=RUN_DEVICES).classify("ACGT")
  with pytest.raises(UserError, match="no masked-language head"):
    nlm_jax.load(cls.checkpoint_path, devices=RUN_DEVICES).predict_masked("AC?T")


# ---------------------------------------------------------------- commands: bad input


def test_finetune_bad_input_is_one_line_and_changes_nothing(runs, tmp_path):
  _, files, mlm, cls, _ = runs
  pc_t, nc_t, pc_v, nc_v = files
  (tmp_path / "empty.fa").write_text("")
  write_fasta(tmp_path / "protein.fa", ["MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNL"] * 5)
  pcs = [s for _, s in fasta_lib_records(pc_t)]
  write_fasta(tmp_path / "nc_copy.fa", pcs[:40] + class_seqs(20, False, 99))  # 2/3 of pcRNA
  damaged = tmp_path / "damaged"
  shutil.copytree(mlm.checkpoint_path, damaged)
  config = json.loads((damaged / "config.json").read_text())
  (damaged / "config.json").write_text(json.dumps({**config, "d_model": "32"}))
  cases = [
      # Data that is not what fine-tuning needs (issue 24).
      (("protein.fa", nc_t, pc_v, nc_v), ["pcRNA training FASTA 'protein.fa'",
                                          "not nucleotide sequences", "protein"]),
      ((pc_t, pc_t, pc_v, nc_v), ["pcRNA and ncRNA training FASTA files", "are the same file"]),
      ((pc_t, str(tmp_path / "nc_copy.fa"), pc_v, nc_v),
       ["pcRNA and ncRNA training FASTA files", "share 6", "of their sequences"]),
      ((pc_t, nc_t, pc_v, pc_v), ["pcRNA and ncRNA validation FASTA files", "same file"]),
      # A damaged pre-trained model: refused before the run's folders are made.
      ((pc_t, nc_t, pc_v, nc_v, f"--pretrained_model={damaged}"),
       ["--pretrained_model:", "config.json", "'d_model': \"32\"", "whole number"]),
      ((pc_t, nc_t, pc_v, nc_v, "--learning_rate=inf"), ["--learning_rate", "inf"]),
      ((pc_t, "empty.fa", pc_v, nc_v, f"--pretrained_model={mlm.checkpoint_path}"),
       ["ncRNA training FASTA", "is empty"]),
      ((pc_t, nc_t, pc_v, nc_v, f"--pretrained_model={mlm.checkpoint_path}",
        "--encoding_method=kmer"), ["differs from the model in --pretrained_model", "(encoding_method 'conv')"]),
      ((pc_t, nc_t, pc_v, nc_v, f"--pretrained_model={cls.checkpoint_path}"),
       ["is a fine-tuned classifier, not a pre-trained model"]),
      ((pc_t, nc_t, pc_v), ["expected four FASTA paths"]),
  ]
  for i, (argv, fragments) in enumerate(cases):
    before = snapshot(tmp_path)
    argv = (*argv, "--model_dir=M", "--results_dir=R")
    proc = run_module("nlm_jax.finetune", tmp_path, *argv)
    assert_one_line_error(proc, fragments, prefix="nlm_jax.finetune: error:")
    assert_unchanged(before, snapshot(tmp_path))
    if i == 0:  # afresh too, as test_bad_input.FRESH
      assert_same_as_fresh(proc, "nlm_jax.finetune", tmp_path, *argv)
      assert_unchanged(before, snapshot(tmp_path))


def test_classify_a_labelled_pair_prints_and_saves_the_scores(runs, tmp_path):
  """classify MODEL PC.fasta NC.fasta OUT.csv, as lncRNA-Py's classify takes a pair: the
  CSV of both files' records, and the printed F1 (macro) is scikit-learn's on the CSV's
  calls (test_scores.reference: scikit-learn where installed, else the definitions)."""
  from test_scores import reference

  _, files, _, cls, _ = runs
  pc_valid, nc_valid = files[2], files[3]
  proc = run_module("nlm_jax.classify", tmp_path, cls.checkpoint_path, pc_valid, nc_valid,
                    "pair.csv", "--batch_size=8")
  assert proc.returncode == 0, proc.stderr[-2000:]
  with open(tmp_path / "pair.csv") as f:
    rows = list(csv.DictReader(f))
  n_pc = len(fasta_lib.Fasta(pc_valid))
  assert [r["id"] for r in rows[:n_pc]] == [f"pc_valid_{i}" for i in range(n_pc)]
  assert rows[n_pc]["id"] == "nc_valid_0" and len(rows) == n_pc + len(fasta_lib.Fasta(nc_valid))
  labels = np.array([1] * n_pc + [0] * (len(rows) - n_pc))
  p = np.array([float(r["P(pcRNA)"]) for r in rows])
  want = reference(labels, p)
  printed = float(proc.stdout.split("F1 (macro)")[1].split()[0])
  assert printed == pytest.approx(want["F1 (macro)"], abs=5e-5), proc.stdout
  with open(tmp_path / "pair.scores.json") as f:
    saved = json.load(f)
  assert saved["Confusion matrix"] == want["Confusion matrix"]
  for name in ("Accuracy", "Precision (pcRNA)", "Recall (pcRNA)", "Precision (ncRNA)",
               "Recall (ncRNA)", "F1 (macro)", "ROC AUC"):
    assert saved[name] == pytest.approx(want[name], abs=1e-9), name
    assert f"{name}" in proc.stdout
  # Run again: the scores file is refused as OUT would be, unless --overwrite.
  again = run_module("nlm_jax.classify", tmp_path, cls.checkpoint_path, pc_valid, nc_valid,
                     "pair.csv")
  assert again.returncode == 2 and "--overwrite" in again.stderr


def test_classify_bad_input_is_one_line(runs, tmp_path):
  _, files, mlm, cls, _ = runs
  (tmp_path / "old.csv").write_text("keep")
  for argv, fragments in [
      ((mlm.checkpoint_path, files[2], "out.csv"), ["pre-trained (masked language) model",
                                                    "nlm_jax.finetune"]),
      ((cls.checkpoint_path, files[2], "old.csv"), ["exists", "--overwrite"]),
      ((cls.checkpoint_path, files[2], "out.npz"), ["must end in .csv"])]:
    before = snapshot(tmp_path)
    proc = run_module("nlm_jax.classify", tmp_path, *argv)
    assert_one_line_error(proc, fragments, prefix="nlm_jax.classify: error:", progress=("classifying",))
    assert_unchanged(before, snapshot(tmp_path))
    if argv[-1] == "out.csv":  # afresh too, as test_bad_input.FRESH
      assert_same_as_fresh(proc, "nlm_jax.classify", tmp_path, *argv)
      assert_unchanged(before, snapshot(tmp_path))


def test_a_diverging_finetune_names_its_own_flags(runs, tmp_path):
  """The loop's non-finite stop advises fine-tuning's --learning_rate, not pre-training's
  --warmup_steps (assert_one_line_error checks every flag it names)."""
  _, files, mlm, _, _ = runs
  proc = run_module("nlm_jax.finetune", tmp_path, *files, f"--pretrained_model={mlm.checkpoint_path}",
                    "--learning_rate=1e30", "--epochs=1", "--n_samples_per_epoch=64",
                    "--batch_size=16", "--context_length=32", "--model_dir=M", "--results_dir=R")
  lines = [l for l in proc.stderr.splitlines() if not l.startswith("I")]  # the run's log
  assert proc.returncode == 3 and len(lines) == 1, proc.stderr[-3000:]
  assert "non-finite loss" in lines[0] and "a lower --learning_rate" in lines[0], lines[0]
  assert "--warmup_steps" not in lines[0]


def test_classify_refuses_non_finite_weights_and_ctrl_c_leaves_nothing(runs, tmp_path):
  import signal

  from safetensors.numpy import load_file, save_file

  from nlm_jax import export

  _, files, _, cls, _ = runs
  export.export(cls.checkpoint_path, str(tmp_path / "E"))
  tensors = dict(load_file(str(tmp_path / "E" / "model.safetensors")))
  tensors["output.weight"] = np.full_like(tensors["output.weight"], np.nan)
  save_file(tensors, str(tmp_path / "E" / "model.safetensors"))
  proc = run_module("nlm_jax.classify", tmp_path, "E", files[2], "out.csv")
  assert_one_line_error(proc, ["'E'", "NaN or infinite weights in output/kernel"],
                        prefix="nlm_jax.classify: error:")
  assert not (tmp_path / "out.csv").exists()
  # Ctrl-C while the rows are written: one line, status 130, no temporary file.
  write_fasta(tmp_path / "many.fa", class_seqs(10000, False, 7))  # minutes of work: never done first
  code, err = signal_while_writing("nlm_jax.classify", tmp_path, signal.SIGINT,
                                   cls.checkpoint_path, "many.fa", "out.csv", "--batch_size=1")
  assert code == 130 and "Traceback" not in err, err
  assert err.strip().splitlines() == [
      "nlm_jax.classify: interrupted (Ctrl-C): its output was not written (nothing half-written "
      "is left); run the same command again."], err
  assert sorted(os.listdir(tmp_path)) == ["E", "many.fa"]
