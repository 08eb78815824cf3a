import glob
import os

import pytest
from absl import flags

from conftest import random_seqs, write_fasta
from nlm_jax import bpe, command, config
from nlm_jax.config import Config, UserError

LAUNCH = os.path.join(os.path.dirname(__file__), "..", "launch")


def parse(*argv):
  fv = flags.FlagValues()
  config.define_flags(fv)
  rest = fv(["pretrain", *argv])
  return command.from_flags(fv, rest[1:])


def test_contract_defaults():
  cfg = parse("t.fa", "v.fa")
  assert (cfg.encoding_method, cfg.epochs, cfg.n_samples_per_epoch, cfg.batch_size) == ("conv", 500, 10000, 8)
  assert (cfg.warmup_steps, cfg.d_model, cfg.N, cfg.ff_dim, cfg.n_heads) == (8, 768, 12, 3072, 12)
  assert (cfg.dropout, cfg.n_kernels, cfg.kernel_size, cfg.k, cfg.context_length) == (0, 768, 10, 6, 768)
  assert (cfg.p_mlm, cfg.p_mask, cfg.p_random, cfg.mask_size) == (0.15, 0.8, 0.1, 1)
  assert (cfg.exp_prefix, cfg.bpe_file, cfg.data_dir, cfg.results_dir) == ("MLM", "", "", "")
  assert cfg.model_root == "models"
  assert not cfg.use_input_linear and not cfg.no_input_relu and not cfg.no_output_linear
  assert cfg.n_nucleotides == 7670


def test_paths_under_data_dir():
  cfg = parse("t.fa", "v.fa", "--data_dir=data")
  assert (cfg.train_path, cfg.valid_path, cfg.model_root) == ("data/t.fa", "data/v.fa", "data/models")
  assert parse("t.fa", "v.fa", "--data_dir=data", "--model_dir=m").model_root == "m"


@pytest.mark.parametrize("argv, name", [
    ((), "MLM_conv_nm768_sm10_dm768_N12_bs8_ws8_cl768_d0"),
    (("--kernel_size=9", "--warmup_steps=32000"), "MLM_conv_nm768_sm9_dm768_N12_bs8_ws32000_cl768_d0"),
    (("--dropout=0",), "MLM_conv_nm768_sm10_dm768_N12_bs8_ws8_cl768_d0"),  # d0 either way
    (("--dropout=0.1", "--d_ff=1024", "--h=8", "--mask_size=3"),
     "MLM_conv_nm768_sm10_dm768_N12_dff1024_h8_bs8_ws8_cl768_d0.1_ms3"),
    (("--no_random_reading_frame", "--input_linear", "--no_input_relu", "--no_output_linear",
      "--output_relu", "--exp_prefix=X"),
     "X_conv_nm768_sm10_dm768_N12_bs8_ws8_cl768_d0--no_rrf--in_lin--no_in_relu--no_out_lin--out_relu"),
])
def test_experiment_name(argv, name):
  assert parse("t.fa", "v.fa", *argv).exp_name == name


@pytest.mark.parametrize("argv, fragment", [
    (("--d_model=100", "--h=8"), "not divisible"),
    (("--d_model=64", "--n_kernels=32", "--noinput_linear"), "--noinput_linear"),
    (("--p_mask=0.9", "--p_random=0.2"), "at most 1"),
    (("--p_mlm=0",), "--p_mlm"),
    (("--p_mlm=1.5",), "[0, 1]"),
    (("--epochs=0",), "--epochs"),
    (("--warmup_steps=-1",), "--warmup_steps"),
    (("--context_length=1",), "--context_length"),
    (("--dropout=1",), "--dropout"),
    (("--mask_size=100000",), "--mask_size"),
    (("--encoding_method=kmer", "--k=11"), "vocabulary"),
    (("--encoding_method=bpe",), "--bpe_file"),
    (("--exp_prefix=a/b",), "--exp_prefix"),
])
def test_bad_values_are_one_line_errors(argv, fragment):
  with pytest.raises(UserError) as e:
    parse("t.fa", "v.fa", *argv)
  assert fragment in str(e.value) and "\n" not in str(e.value)


def test_input_linear_resolves_from_widths():
  assert parse("t.fa", "v.fa", "--d_model=64", "--n_kernels=32", "--h=4").use_input_linear
  assert not parse("t.fa", "v.fa", "--d_model=64", "--n_kernels=64", "--h=4").use_input_linear
  assert parse("t.fa", "v.fa", "--input_linear").use_input_linear


def test_config_json_round_trip():
  cfg = parse("t.fa", "v.fa", "--d_ff=100", "--input_linear")
  assert Config.from_json(cfg.to_json()) == cfg


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(LAUNCH, "*.flags"))))
def test_every_launch_file_parses_and_says_how_to_run_it(path, tmp_path):
  with open(path) as f:
    lines = f.read().splitlines()
  header = [l for l in lines[:12] if l.startswith("#")]
  text = "\n".join(header)
  finetune = "python -m nlm_jax.finetune" in text  # else a pre-training launch file
  assert ("python -m nlm_jax.finetune" if finetune else "python -m nlm_jax.pretrain") in text
  assert "--flagfile=launch/" in text
  assert "Hardware" in text and "Expect" in text
  # absl keeps a trailing "# comment" as part of the value: none allowed.
  assert not [l for l in lines if l.startswith("--") and "#" in l]
  if finetune:  # the architecture comes with --pretrained_model: tested in test_finetune.py
    fv = flags.FlagValues()
    config.define_flags(fv, task="cls")
    cfg = command.from_finetune_flags(fv, fv(["finetune", "a", "b", "c", "d", f"--flagfile={path}"])[1:])
    assert cfg.exp_name.startswith(cfg.exp_prefix + "_" + cfg.encoding_method)
    return
  overrides = []
  if "--encoding_method=bpe" in lines:  # the BPE file is fitted by the user: make one here
    overrides = [f"--bpe_file={tmp_path / 'x.bpe'}"]
    bpe.fit(write_fasta(tmp_path / "t.fa", random_seqs(20, 50, 200)), 30, str(tmp_path / "x.bpe"))
  cfg = parse("t.fa", "v.fa", f"--flagfile={path}", *overrides)
  assert cfg.exp_name.startswith(cfg.exp_prefix + "_" + cfg.encoding_method)


def test_token_experiment_names():
  """2.3: the examples of lncRNA-Py's encoding comparison."""
  kw = ("--exp_prefix=MLM_EM", "--warmup_steps=32000")
  assert parse("t.fa", "v.fa", *kw, "--encoding_method=kmer", "--k=3").exp_name == \
      "MLM_EM_kmer_k3_dm768_N12_bs8_ws32000_cl768_d0"
  assert parse("t.fa", "v.fa", *kw, "--encoding_method=nuc").exp_name == \
      "MLM_EM_nuc_dm768_N12_bs8_ws32000_cl768_d0"
  cfg = Config("t.fa", "v.fa", exp_prefix="MLM_EM", warmup_steps=32000, encoding_method="bpe",
               bpe_file="x", bpe_vocab_size=4096)
  assert cfg.exp_name == "MLM_EM_bpe_vs4096_dm768_N12_bs8_ws32000_cl768_d0"


def test_conv_launch_file_has_the_published_settings():
  cfg = parse("t.fa", "v.fa", f"--flagfile={os.path.join(LAUNCH, 'conv.flags')}")
  assert (cfg.kernel_size, cfg.warmup_steps, cfg.d_model, cfg.N, cfg.context_length,
          cfg.batch_size, cfg.encoding_method) == (9, 32000, 768, 12, 768, 8, "conv")
  assert cfg.exp_name == "MLM_conv_nm768_sm9_dm768_N12_bs8_ws32000_cl768_d0"


def test_no_rrf_is_named_where_the_run_has_a_reading_frame():
  """conv and k-mer windows start in a random frame unless --no_random_reading_frame, so
  runs with and without it must not share a folder; nuc and BPE have no frame."""
  kw = ("--exp_prefix=X", "--no_random_reading_frame")
  assert parse("t.fa", "v.fa", *kw, "--encoding_method=kmer", "--k=3").exp_name.endswith("--no_rrf")
  assert parse("t.fa", "v.fa", *kw).exp_name.endswith("--no_rrf")
  assert "--no_rrf" not in parse("t.fa", "v.fa", *kw, "--encoding_method=nuc").exp_name
  assert "--no_rrf" not in parse("t.fa", "v.fa", *kw, "--encoding_method=kmer", "--k=1").exp_name
