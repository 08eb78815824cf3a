"""lncRNA-Py's own model folders (save_pretrained of MaskedConvModel / MaskedTokenModel)
read by nlm_jax.load, and folders of no known kind refused in one line.

Without PyTorch, the folders are made by the project's exporter and renamed to what
lncRNA-Py's save_pretrained writes: config.json (its constructor arguments, checked
verbatim against the files quoted in issue 15), model.safetensors, README.md, and no
nlm_jax.json. The loaded model must give the logits and embeddings of the model it came
from.
"""

import json
import os

import jax
import numpy as np
import pytest
from absl import flags
from safetensors.numpy import save_file

import nlm_jax
from conftest import random_seqs, write_fasta
from nlm_jax import bpe, command, config, folders, layout, model as model_lib, pretrained, train
from nlm_jax.config import Config, UserError

DEV = jax.devices()[:1]
LAUNCH = os.path.join(os.path.dirname(__file__), "..", "launch")
SMALL = dict(d_model=32, n_kernels=32, N=1, h=4, kernel_size=3, context_length=16, k=3,
             batch_size=8, encoder_dropout=0.0)

# The config.json files lncRNA-Py's save_pretrained writes, as quoted in issue 15.
LNCRNAPY_CONV = {"base_arch": None, "base_arch_config": {
    "N": 2, "d_ff": 256, "d_model": 64, "dropout": 0.1, "h": 1, "input_linear": False,
    "input_relu": True, "kernel_size": 9, "n_hidden_kernels": 0, "n_kernels": 64,
    "type": "CSEBERT"}, "dropout": 0.0, "n_hidden_kernels": 0, "output_linear": True,
    "output_relu": False, "pred_batch_size": 8}
LNCRNAPY_CLASSIFIER = {"base_arch": None, "base_arch_config": LNCRNAPY_CONV["base_arch_config"],
                       "dropout": 0.0, "hidden_layers": [], "pooling": "CLS", "pred_batch_size": 8}
LNCRNAPY_TOKEN = {"base_arch": None, "base_arch_config": {
    "N": 2, "d_ff": 256, "d_model": 64, "dropout": 0.1, "h": 1, "type": "BERT",
    "vocab_size": 69}, "dropout": 0.0, "pred_batch_size": 8}


def test_lncrnapy_config_json_is_read_and_written_verbatim():
  conv = folders.config_from_lncrnapy(LNCRNAPY_CONV, "/x/lncRNA-BERT-CSE-k9-pretrained/config.json")
  assert (conv.encoding_method, conv.d_model, conv.N, conv.ff_dim, conv.n_heads, conv.n_kernels,
          conv.kernel_size, conv.use_input_linear, conv.no_output_linear, conv.output_relu,
          conv.dropout, conv.encoder_dropout, conv.context_length) == \
      ("conv", 64, 2, 256, 1, 64, 9, False, False, False, 0.0, 0.1, 768)
  assert conv.exp_name == "lncRNA-BERT-CSE-k9-pretrained_conv_nm64_sm9_dm64_N2_bs8_ws8_cl768_d0"
  assert folders.lncrnapy_config(conv) == LNCRNAPY_CONV
  token = folders.config_from_lncrnapy(LNCRNAPY_TOKEN, "/x/y/config.json", context_length=100)
  assert (token.encoding_method, token.k, token.vocab_size, token.context_length) == \
      ("kmer", 3, 69, 100)
  assert folders.lncrnapy_config(token) == LNCRNAPY_TOKEN
  cls = folders.config_from_lncrnapy(LNCRNAPY_CLASSIFIER, "/x/y/config.json")
  assert (cls.is_classifier, cls.pooling, cls.hidden_cls_layers, cls.encoding_method,
          cls.context_length) == (True, "cls", (), "conv", 768)
  assert folders.lncrnapy_config(cls) == LNCRNAPY_CLASSIFIER
  probe = folders.config_from_lncrnapy({**LNCRNAPY_CLASSIFIER, "pooling": "mean",
                                        "hidden_layers": [16, 8]}, "/x/y/config.json")
  assert (probe.pooling, probe.hidden_cls_layers) == ("mean", (16, 8))
  nuc = dict(LNCRNAPY_TOKEN, base_arch_config=dict(LNCRNAPY_TOKEN["base_arch_config"], vocab_size=9))
  assert folders.config_from_lncrnapy(nuc, "c.json").encoding_method == "nuc"


@pytest.mark.parametrize("change,fragments", [
    (dict(base_arch_config=dict(LNCRNAPY_TOKEN["base_arch_config"], vocab_size=40)),
     ["40 tokens", "BPE model", "bpe_file"]),
    (dict(pooling="max", hidden_layers=[]), ["Classifier with 'max' pooling"]),
    (dict(base_arch_config=dict(LNCRNAPY_TOKEN["base_arch_config"], type="ResNet")),
     ["'ResNet'", "BERT and CSEBERT"]),
    (dict(base_arch_config={"type": "BERT", "N": 2}), ["lacks the entry 'd_model'"]),
])
def test_lncrnapy_configs_nlm_jax_cannot_build_are_one_line_errors(change, fragments):
  with pytest.raises(UserError) as e:
    folders.config_from_lncrnapy({**LNCRNAPY_TOKEN, **change}, "c.json")
  assert "\n" not in str(e.value) and all(f in str(e.value) for f in fragments), str(e.value)
  with pytest.raises(UserError, match="exceeds the 5000 positions"):
    folders.config_from_lncrnapy(LNCRNAPY_CONV, "c.json", context_length=5001)
  with pytest.raises(UserError, match="hidden kernel"):
    folders.config_from_lncrnapy({**LNCRNAPY_CONV, "n_hidden_kernels": 3}, "c.json")


def lncrnapy_folder(folder, cfg, params):
  """What lncRNA-Py's save_pretrained writes for this model: the exporter's tensors and
  config.json, a model card, no nlm_jax.json and no tokenizer."""
  os.makedirs(folder)
  save_file(layout.to_tensors(cfg, jax.device_get(params)), os.path.join(folder, "model.safetensors"),
            metadata={"format": "pt"})
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(folders.lncrnapy_config(cfg), f, indent=2, sort_keys=True)
  with open(os.path.join(folder, "README.md"), "w") as f:
    f.write("---\ntags:\n- model_hub_mixin\n- pytorch_model_hub_mixin\n---\n")
  return str(folder)


@pytest.fixture(scope="module")
def bpe_file(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("bpe")
  fa = write_fasta(tmp / "t.fa", random_seqs(200, 50, 200, seed=3))
  bpe.fit(fa, 40, str(tmp / "40.bpe"))
  return str(tmp / "40.bpe")


@pytest.mark.parametrize("encoding", ["conv", "kmer", "bpe"])
def test_lncrnapy_folders_give_the_logits_of_their_model(encoding, bpe_file, tmp_path):
  extra = dict(bpe_file=bpe_file, bpe_vocab_size=40) if encoding == "bpe" else {}
  cfg = Config("t.fa", "v.fa", encoding_method=encoding, input_linear=True, output_relu=True,
               **{**SMALL, **extra})
  params = model_lib.build(cfg).init(jax.random.key(1), train.dummy_inputs(cfg))["params"]
  original = pretrained.Model(cfg, params, devices=DEV, batch_size=4)
  folder = lncrnapy_folder(tmp_path / "lncRNA-BERT", cfg, params)
  if encoding == "bpe":
    with pytest.raises(UserError, match="pass the .bpe file"):
      nlm_jax.load(folder, devices=DEV)
  loaded = nlm_jax.load(folder, devices=DEV, batch_size=4, context_length=16,
                        bpe_file=bpe_file if encoding == "bpe" else "")
  assert loaded.cfg.encoding_method == encoding and loaded.cfg.exp_name.startswith("lncRNA-BERT_")
  same = jax.tree.map(np.array_equal, jax.device_get(loaded.params), jax.device_get(params))
  assert jax.tree.all(same)
  inputs = original.encode(random_seqs(4, 1, 120, seed=2))
  np.testing.assert_array_equal(loaded.logits(inputs), original.logits(inputs))
  # Without a context length, lncRNA-Py's default: 768 positions.
  assert nlm_jax.load(folder, devices=DEV, bpe_file=extra.get("bpe_file", "")).cfg.context_length == 768


def test_folders_of_no_known_kind_are_one_line_errors(tmp_path):
  expected = "expected a folder of nlm_jax.pretrain"
  (tmp_path / "empty").mkdir()
  (tmp_path / "other").mkdir()
  (tmp_path / "other" / "config.json").write_text('{"architectures": ["BertForMaskedLM"]}')
  for name, fragment in (("nope", "does not exist"), ("empty", "holds no config.json"),
                         ("other", "neither nlm_jax's settings nor lncRNA-Py's")):
    with pytest.raises(UserError) as e:
      nlm_jax.load(str(tmp_path / name), devices=DEV)
    message = str(e.value)
    assert "\n" not in message and fragment in message and expected in message, message
    assert "lncRNA-Py's save_pretrained (config.json with base_arch_config" in message


# ------------------------------------------------------------------ --init_from


def parse(*argv):
  fv = flags.FlagValues()
  config.define_flags(fv)
  return command.from_flags(fv, fv(["pretrain", *argv])[1:])


def stub_folder(folder, stored, pe_rows=1000):
  """A lncRNA-Py folder down to what the configuration is read from."""
  os.makedirs(folder)
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(stored, f)
  d = stored["base_arch_config"]["d_model"]
  name = "positional_encoder" if stored["base_arch_config"]["type"] == "CSEBERT" else "pos_encoder"
  save_file({f"base_arch.{name}.pe": np.zeros((1, pe_rows, d), np.float32)},
            os.path.join(folder, "model.safetensors"))
  return str(folder)


def test_init_from_takes_the_architecture_and_refuses_other_flags(tmp_path):
  conv = stub_folder(tmp_path / "cse", LNCRNAPY_CONV)
  cfg = parse("t.fa", "v.fa", f"--init_from={conv}", "--exp_prefix=GO", "--d_model=64")
  assert cfg.exp_name == "GO_conv_nm64_sm9_dm64_N2_bs8_ws8_cl768_d0"
  assert (cfg.ff_dim, cfg.n_heads, cfg.encoder_dropout, cfg.init_from) == (256, 1, 0.1, conv)
  kmer = stub_folder(tmp_path / "k3", LNCRNAPY_TOKEN)
  cfg = parse("t.fa", "v.fa", f"--init_from={kmer}", "--context_length=512", "--batch_size=16")
  assert (cfg.encoding_method, cfg.k, cfg.context_length, cfg.batch_size) == ("kmer", 3, 512, 16)
  # The published CSE model with the published settings: the flags agree with the folder.
  base = dict(LNCRNAPY_CONV["base_arch_config"], d_model=768, n_kernels=768, N=12, d_ff=3072, h=12)
  published = stub_folder(tmp_path / "published", dict(LNCRNAPY_CONV, base_arch_config=base))
  cfg = parse("t.fa", "v.fa", f"--flagfile={os.path.join(LAUNCH, 'conv.flags')}",
              f"--init_from={published}", "--exp_prefix=MLM_MORE")
  assert cfg.exp_name == "MLM_MORE_conv_nm768_sm9_dm768_N12_bs8_ws32000_cl768_d0"
  for argv, fragments in (
      ([f"--init_from={conv}", "--d_model=768"], ["--d_model 768 differs", "(d_model 64)"]),
      ([f"--init_from={conv}", "--kernel_size=10"], ["--kernel_size 10", "drop --kernel_size"]),
      ([f"--init_from={conv}", "--h=4"], ["--h 4", "(h 1)"]),
      ([f"--init_from={kmer}", "--k=6"], ["--k 6", "(k 3)"]),
      ([f"--init_from={kmer}", "--encoding_method=conv"], ["--encoding_method 'conv'"]),
      ([f"--init_from={kmer}", "--context_length=1001"], ["--init_from: context length 1001",
                                                          "at most 1000"]),
      ([f"--init_from={tmp_path}"], ["--init_from:", "holds no config.json", "expected"]),
      ([f"--init_from={stub_folder(tmp_path / 'cls', LNCRNAPY_CLASSIFIER)}"],
       ["is a fine-tuned classifier, not a pre-trained model", "nlm_jax.classify"])):
    with pytest.raises(UserError) as e:
      parse("t.fa", "v.fa", *argv)
    assert "\n" not in str(e.value) and all(f in str(e.value) for f in fragments), str(e.value)


def test_init_from_starts_from_the_folders_parameters(tmp_path):
  """With a warm-up of 10^9 steps the learning rate is ~1e-14: the run's best checkpoint
  holds the folder's parameters, which a fresh start (seed 0) would not."""
  cfg = Config("t.fa", "v.fa", encoding_method="conv", **SMALL)
  params = model_lib.build(cfg).init(jax.random.key(7), train.dummy_inputs(cfg))["params"]
  folder = lncrnapy_folder(tmp_path / "lncRNA-BERT", cfg, params)
  t = write_fasta(tmp_path / "t.fa", random_seqs(16, 20, 80, seed=1))
  v = write_fasta(tmp_path / "v.fa", random_seqs(8, 20, 80, seed=2))
  run_cfg = parse(t, v, f"--init_from={folder}", "--context_length=16", "--epochs=1",
                  "--n_samples_per_epoch=16", "--warmup_steps=1000000000", "--precision=fp32",
                  f"--model_dir={tmp_path / 'M'}", f"--results_dir={tmp_path / 'R'}")
  train.run(run_cfg, DEV)
  best = nlm_jax.load(run_cfg.checkpoint_path, devices=DEV).params
  close = jax.tree.map(lambda a, b: np.allclose(a, b, atol=1e-6), jax.device_get(best),
                       jax.device_get(params))
  assert jax.tree.all(close)
