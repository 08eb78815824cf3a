"""nlm_jax: pre-training of nucleotide language models in JAX/Flax."""
