"""nlm_jax: pre-training of nucleotide language models in JAX/Flax."""


def load(path: str, **kwargs):
  """A pre-trained model from its folder: see nlm_jax.pretrained.load."""
  from nlm_jax import cli

  cli.import_jax()  # a JAX environment it refuses is a UserError, as in the commands
  from nlm_jax import pretrained  # JAX is imported on first use, not with the package

  return pretrained.load(path, **kwargs)
