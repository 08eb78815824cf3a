"""lncRNA-Py's rules on the same weights (issue 26): attention sees CLS and the whole
kernel_size windows of a sequence (CSEBERT.forward rounds count_nonzero / kernel_size
down), N and masked nucleotides count as nucleotides, and lncRNA-Py classifies a sequence
longer than the window by its 3' end. Checked against a NumPy forward pass written from
lncRNA-Py's formulas on exported weights, and against lncRNA-Py's own code when its
checkout is present (../shared/tools/peer_setup.sh)."""

import json
import os
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nlm_jax
from nlm_jax import export, fasta as fasta_lib, folders, layout, model as model_lib, pretrained
from nlm_jax.config import Config

from conftest import numpy_logits, peer_paths, write_fasta

KS = 9
ARCH = dict(encoding_method="conv", d_model=32, N=2, h=2, n_kernels=32, kernel_size=KS,
            context_length=6, dropout=0.0, encoder_dropout=0.0)  # windows of 45 nucleotides
# 1-3 kernels and one either side, a window with N, a full window, and longer than it.
LENGTHS = (1, KS - 1, KS, KS + 1, 2 * KS - 1, 2 * KS, 2 * KS + 1, 3 * KS - 1, 3 * KS, 3 * KS + 1)


def sequences():
  rng = np.random.default_rng(26)
  seqs = ["".join(rng.choice(list("ACGT"), n)) for n in LENGTHS]
  seqs[3] = seqs[3][:4] + "N" + seqs[3][5:]  # N counts as a nucleotide (4D-DNA: 1/4 each)
  seqs[6] = "NN" + seqs[6][2:-1] + "N"
  seqs += ["".join(rng.choice(list("ACGTN"), 45)), "".join(rng.choice(list("ACGT"), 100))]
  return seqs


def params_of(cfg):
  module = model_lib.build(cfg)
  return jax.device_get(module.init(jax.random.key(3), model_lib.dummy_inputs(cfg))["params"])


def codes(rows, width):
  out = np.full((len(rows), width), fasta_lib.PAD, np.uint8)
  for i, r in enumerate(rows):
    out[i, :len(r)] = r
  return out


@pytest.mark.parametrize("partial", [False, True])
def test_conv_logits_equal_a_numpy_forward_with_lncrnapys_key_rule(partial):
  cfg = Config("", "", **ARCH, attend_partial_window=partial)
  params = params_of(cfg)
  model = pretrained.Model(cfg, params, devices=jax.devices()[:1])
  # The 3' window of the long sequence, as lncRNA-Py's 4D-DNA takes it (--long_sequences lncrnapy).
  rows = [model._windows(s, "lncrnapy")[0] for s in sequences()]
  assert [len(r) for r in rows] == [*LENGTHS, 45, 45]
  np.testing.assert_array_equal(rows[-1], fasta_lib.encode(sequences()[-1][-45:]))
  x = codes(rows, cfg.n_nucleotides)
  got = model.logits(x)
  tensors, constructor = layout.to_tensors(cfg, params), folders.lncrnapy_config(cfg)
  want = numpy_logits(tensors, constructor, x, attend_partial_window=partial)
  np.testing.assert_allclose(got, want, atol=1e-5)
  # The rule matters: lengths that are not multiples of the kernel size differ under the
  # other one, multiples do not.
  other = numpy_logits(tensors, constructor, x, attend_partial_window=not partial)
  differ = [bool(np.abs(got[i] - other[i]).max() > 1e-3) for i in range(len(rows))]
  assert differ == [n % KS != 0 and n < 45 for n in [*LENGTHS, 45, 45]]
  # The attended length: CLS and int(count / ks) windows, or the ceiling.
  _, lengths = model.module.apply({"params": model.params}, jnp.asarray(x), method="embed")
  counts = np.array([*LENGTHS, 45, 45])
  np.testing.assert_array_equal(lengths, 1 + (-(-counts // KS) if partial else counts // KS))


def test_a_packed_row_keys_only_its_sequences_whole_windows():
  """Packing keeps the rule: a packed row gives each of its sequences the logits that
  sequence gets in a row of its own (the partial last window is a query, not a key)."""
  cfg = Config("", "", **{**ARCH, "context_length": 12})
  params = params_of(cfg)
  module = model_lib.build(cfg)
  a, b = fasta_lib.encode("ACGTTGCAACGTA" + "C" * 7), fasta_lib.encode("GATTACA" * 2)  # 20, 14 nt
  # Packed: CLS slot, 3 windows of a (the last partial), CLS slot, 2 windows of b.
  row = np.full(cfg.n_nucleotides, fasta_lib.PAD, np.uint8)
  row[:20], row[4 * KS:4 * KS + 14] = a, b
  segments = np.array([[1, 1, 1, 1, 2, 2, 2, 0, 0, 0, 0, 0]], np.int32)
  positions = np.array([[0, 1, 2, 3, 0, 1, 2, 0, 0, 0, 0, 0]], np.int32)
  packed = model_lib.Packed(jnp.asarray(segments), jnp.asarray(positions))
  got = module.apply({"params": params}, jnp.asarray(row[None]), packed=packed)[0]
  alone = module.apply({"params": params}, jnp.asarray(codes([a, b], cfg.n_nucleotides)))
  np.testing.assert_allclose(got[:3 * KS], alone[0, :3 * KS], atol=1e-5)
  np.testing.assert_allclose(got[4 * KS:6 * KS], alone[1, :2 * KS], atol=1e-5)


def test_old_conv_configs_keep_the_rule_they_were_trained_with(tmp_path):
  cfg = Config("", "", **ARCH)
  stored = json.loads(cfg.to_json())
  del stored["attend_partial_window"]  # a config.json written before the field
  assert Config.from_json(json.dumps(stored)).attend_partial_window is True
  assert Config.from_json(cfg.to_json()).attend_partial_window is False
  token = json.loads(Config("", "", encoding_method="nuc").to_json())
  del token["attend_partial_window"]
  assert Config.from_json(json.dumps(token)).attend_partial_window is False


def test_the_finetuned_experiment_name_holds_d_ff_and_h_as_lncrnapys():
  cfg = Config("pc.fa", "pc.fa", task="cls", fasta_nc_train="nc.fa", fasta_nc_valid="nc.fa",
               pretrained_model="models/x", exp_prefix="CLS", d_model=64, N=2)
  assert cfg.exp_name.startswith("CLS_conv_finetuned_nm768_sm10_dm64_N2_dff256_h1_bs8_lr")
  assert "_dff" not in Config("t.fa", "v.fa", d_model=64).exp_name  # pre-training: if given


PEER_SCRIPT = r"""
import json, sys
import torch
sys.path.insert(0, sys.argv[1])
from lncrnapy.data import Data
from lncrnapy.modules import Classifier, MaskedConvModel
mlm_dir, cls_dir, fasta, width = sys.argv[2:6]
data = Data(fasta)
data.set_tensor_features("4D-DNA", len_4d_dna=int(width))
x = data[list(range(len(data)))][0]
mlm = MaskedConvModel.from_pretrained(mlm_dir).eval()
cls = Classifier.from_pretrained(cls_dir).eval()
with torch.no_grad():
  logits = mlm(x)
  p = torch.sigmoid(cls(x))
print(json.dumps({"logits": logits.tolist(), "p": p.reshape(-1).tolist()}))
"""


def test_lncrnapys_own_code_gives_the_same_outputs_on_the_same_weights(tmp_path):
  """A MaskedConvModel and a Classifier in lncRNA-Py's folders: lncRNA-Py's forward pass
  and nlm_jax's (read from the same folders) agree within 1e-5 for every length, with N,
  and for sequences longer than the window (--long_sequences lncrnapy)."""
  python, checkout = peer_paths()
  mlm_cfg = Config("", "", **ARCH)
  cls_cfg = Config("pc.fa", "pc.fa", task="cls", fasta_nc_train="nc.fa", fasta_nc_valid="nc.fa",
                   **ARCH)  # hidden layers: lncRNA-Py's forward cannot unpack them
  for name, cfg in (("mlm", mlm_cfg), ("cls", cls_cfg)):
    os.makedirs(tmp_path / name)
    export._write(cfg, layout.to_tensors(cfg, params_of(cfg)), str(tmp_path / name))
    os.remove(tmp_path / name / export.EXPORT_CONFIG)  # lncRNA-Py's files alone
  seqs = sequences()
  fasta = write_fasta(tmp_path / "seqs.fa", seqs)
  out = subprocess.run([python, "-c", PEER_SCRIPT, checkout, str(tmp_path / "mlm"),
                        str(tmp_path / "cls"), fasta, str(mlm_cfg.n_nucleotides)],
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  peer = json.loads(out.stdout.strip().splitlines()[-1])

  mlm = nlm_jax.load(str(tmp_path / "mlm"), devices=jax.devices()[:1],
                     context_length=ARCH["context_length"])
  assert mlm.cfg.attend_partial_window is False
  x = codes([mlm._windows(s, "lncrnapy")[0] for s in seqs], mlm_cfg.n_nucleotides)
  want = np.asarray(peer["logits"], np.float32)  # (B, 4, N'): channels first
  np.testing.assert_allclose(mlm.logits(x), want.transpose(0, 2, 1), atol=1e-5)

  cls = nlm_jax.load(str(tmp_path / "cls"), devices=jax.devices()[:1],
                     context_length=ARCH["context_length"])
  np.testing.assert_allclose(cls.classify(seqs, long_sequences="lncrnapy"), peer["p"], atol=1e-5)
  # nlm_jax's default averages the long sequence's windows: another answer there only.
  p = cls.classify(seqs)
  np.testing.assert_allclose(p[:-1], peer["p"][:-1], atol=1e-5)
  assert abs(p[-1] - peer["p"][-1]) > 1e-4
