"""A Hugging Face hub id where a model folder goes (nlm_jax.load, embed, classify,
finetune's --pretrained_model, pretrain's --init_from): resolved through huggingface_hub to
the snapshot folder of its cache, then read as any folder. Offline throughout: the cache
is laid out here as huggingface_hub writes it, and HF_HUB_OFFLINE=1 keeps it from the
network."""

import os

import jax
import numpy as np
import pytest

import nlm_jax
from conftest import run_command, write_fasta
from nlm_jax import hub, model as model_lib, train
from nlm_jax.config import Config, UserError
from test_finetune import parse
from test_folders import SMALL, lncrnapy_folder

HUB_ID = "luukromeijn/lncRNA-BERT-CSE-k9-pretrained"
REVISION = "0123456789abcdef0123456789abcdef01234567"


def hub_cache(root, repo_id, cfg, params):
  """huggingface_hub's cache layout: models--OWNER--NAME/{refs/main, snapshots/REV/...}."""
  repo = root / ("models--" + repo_id.replace("/", "--"))
  os.makedirs(repo / "refs")
  (repo / "refs" / "main").write_text(REVISION)
  os.makedirs(repo / "snapshots")
  return lncrnapy_folder(repo / "snapshots" / REVISION, cfg, params)


@pytest.fixture
def cached(tmp_path, monkeypatch):
  """A tiny conv model of lncRNA-Py's layout under HUB_ID in a hub cache; offline; the
  working directory holds no folder named like the id's owner."""
  cfg = Config("t.fa", "v.fa", **SMALL)
  params = model_lib.build(cfg).init(jax.random.key(3), train.dummy_inputs(cfg))["params"]
  snapshot = hub_cache(tmp_path / "hub", HUB_ID, cfg, params)
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  work = tmp_path / "work"
  os.makedirs(work)
  monkeypatch.chdir(work)
  return snapshot, params


def test_load_reads_a_hub_id_from_the_cache(cached):
  snapshot, params = cached
  assert hub.resolve(HUB_ID) == snapshot
  model = nlm_jax.load(HUB_ID, devices=jax.devices()[:1], context_length=16)
  for a, b in zip(jax.tree.leaves(jax.device_get(model.params)), jax.tree.leaves(params), strict=True):
    np.testing.assert_allclose(a, b, atol=1e-7)
  # A path that exists is never looked up; nor is a missing one under an existing folder.
  os.makedirs("luukromeijn")
  assert hub.resolve(HUB_ID) == HUB_ID
  os.makedirs("models")
  assert hub.is_hub_id("modelz/MLM_missing") and not hub.is_hub_id("models/MLM_missing")


def test_offline_and_not_cached_is_one_line(cached):
  with pytest.raises(UserError) as e:
    nlm_jax.load("someone/not-cached")
  message = str(e.value)
  assert "\n" not in message and "'someone/not-cached' does not exist" in message
  assert "HF_HUB_OFFLINE is set" in message and "hf download someone/not-cached" in message


def test_finetune_starts_from_a_hub_id(cached):
  snapshot, _ = cached
  cfg = parse("pc.fa", "nc.fa", "pcv.fa", "ncv.fa", f"--pretrained_model={HUB_ID}",
              "--context_length=16")
  assert cfg.pretrained_model == snapshot
  assert (cfg.encoding_method, cfg.d_model, cfg.N, cfg.kernel_size) == ("conv", 32, 1, 3)
  with pytest.raises(UserError, match="^--pretrained_model: model folder 'someone/x' does not exist"):
    parse("pc.fa", "nc.fa", "pcv.fa", "ncv.fa", "--pretrained_model=someone/x")


def test_embed_command_reads_a_hub_id_and_says_when_it_cannot(cached, tmp_path):
  fa = write_fasta(tmp_path / "in.fa", ["ACGTACGTAC" * 5, "GGCATTACGA" * 3])
  env = {"HF_HUB_CACHE": os.environ["HF_HUB_CACHE"], "HF_HUB_OFFLINE": "1"}
  out = run_command("nlm_jax.embed", os.getcwd(), HUB_ID, fa, "out.npz", "--context_length=16",
                    env=env)
  assert out.returncode == 0, out.stderr[-2000:]
  z = np.load("out.npz")
  model = nlm_jax.load(HUB_ID, devices=jax.devices()[:1], context_length=16)
  np.testing.assert_allclose(z["embeddings"], model.embed(["ACGTACGTAC" * 5, "GGCATTACGA" * 3]),
                             atol=1e-4)
  missing = run_command("nlm_jax.embed", os.getcwd(), "someone/not-cached", fa, "x.npz", env=env)
  assert missing.returncode == 2 and missing.stdout == "", missing.stderr[-2000:]
  assert missing.stderr.count("\n") == 1 and "HF_HUB_OFFLINE is set" in missing.stderr
