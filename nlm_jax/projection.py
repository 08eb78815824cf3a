"""Embeddings in two dimensions, for `embed --plot`: PCA in NumPy, or t-SNE and UMAP
where the extra `plots` installs scikit-learn and umap-learn; drawn as a scatter plot
coloured by the FASTA file each record came from (lncRNA-Py's embeddings script draws
the same, with t-SNE by default)."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from nlm_jax.errors import UserError

METHODS = ("pca", "tsne", "umap")
# The module each method imports, and the package that brings it.
NEEDS = {"tsne": ("sklearn.manifold", "scikit-learn"), "umap": ("umap", "umap-learn")}
SOFTWARE = "nlm_jax.embed --plot"  # in the PNG's metadata: embed wrote this plot


def check_available(method: str) -> None:
  """A UserError naming the extra to install when `method` needs a package this
  environment lacks (checked before anything is embedded)."""
  if method not in NEEDS:
    return
  module, package = NEEDS[method]
  try:
    __import__(module)
  except ImportError:
    raise UserError(f"--plot {method} needs {package}, which is not installed: pip install -e "
                    f"'.[plots]' (or pip install {package}) from the repository root, or use "
                    "--plot pca.") from None


def project(x_NxD: np.ndarray, method: str, seed: int = 0) -> np.ndarray:
  """(N, 2): the first two principal components (pca: signs fixed so that each axis's
  largest coordinate is positive), or a seeded t-SNE or UMAP embedding."""
  x_NxD = np.asarray(x_NxD, np.float64)
  if len(x_NxD) < 3:
    raise UserError(f"--plot needs at least 3 records to project, got {len(x_NxD)}.")
  if method == "pca":
    centred_NxD = x_NxD - x_NxD.mean(0)
    _, _, vt_DxD = np.linalg.svd(centred_NxD, full_matrices=False)
    xy_Nx2 = centred_NxD @ vt_DxD[:2].T
    if xy_Nx2.shape[1] < 2:  # d_model 1
      xy_Nx2 = np.pad(xy_Nx2, ((0, 0), (0, 2 - xy_Nx2.shape[1])))
    signs = np.sign(xy_Nx2[np.abs(xy_Nx2).argmax(0), [0, 1]])
    return xy_Nx2 * np.where(signs == 0, 1, signs)
  if method == "tsne":
    from sklearn.manifold import TSNE

    return TSNE(n_components=2, init="pca", random_state=seed,
                perplexity=min(30.0, (len(x_NxD) - 1) / 3)).fit_transform(x_NxD)
  import umap

  return umap.UMAP(n_components=2, random_state=seed).fit_transform(x_NxD)


def draw(xy_Nx2: np.ndarray, file_N: np.ndarray, files: Sequence[str], method: str, path: str,
         title: str) -> None:
  """Writes the scatter plot PNG to `path`: a colour per FASTA file."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 5))
  for i, name in enumerate(files):
    points = xy_Nx2[file_N == i]
    ax.scatter(points[:, 0], points[:, 1], s=4, alpha=0.6, label=f"{os.path.basename(name)} ({len(points):,})")
  label = {"pca": "PC", "tsne": "t-SNE ", "umap": "UMAP "}[method]
  ax.set_xlabel(f"{label}1")
  ax.set_ylabel(f"{label}2")
  ax.set_title(title, fontsize=9)
  ax.legend(markerscale=3, fontsize=8)
  fig.tight_layout()
  fig.savefig(path, format="png", dpi=120, metadata={"Software": SOFTWARE})
  plt.close(fig)


def is_plot_file(path: str) -> bool:
  """Whether `path` is a PNG that embed --plot wrote."""
  try:
    with open(path, "rb") as f:
      head = f.read(4096)
  except OSError:
    return False
  return head.startswith(b"\x89PNG") and SOFTWARE.encode() in head
