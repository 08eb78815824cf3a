"""Model folders named by a Hugging Face hub id (`luukromeijn/lncRNA-BERT-CSE-k9-pretrained`):
`resolve` turns the id into the local snapshot folder that huggingface_hub downloads (or
finds in its cache), which folders.py then reads as any folder. A path that exists is
never looked up. HF_HUB_OFFLINE=1 keeps to the cache; HF_HUB_CACHE (or HF_HOME) moves it."""

from __future__ import annotations

import os
import re

from nlm_jax.errors import UserError

# owner/name as the hub spells them; a path that exists wins over an id.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")
# What lncRNA-Py's save_pretrained writes (and a BPE model beside it): nothing else is fetched.
FILES = ["config.json", "model.safetensors", "*.bpe"]


def is_hub_id(name: str) -> bool:
  """owner/name that is no path here: neither it nor a folder `owner` exists (so a missing
  models/RUN is a missing folder, never a download)."""
  return (bool(HUB_ID.fullmatch(name)) and ".." not in name
          and not os.path.lexists(name) and not os.path.isdir(name.split("/")[0]))


def _offline() -> bool:
  # Read now, not when huggingface_hub was imported (its constants are read once).
  return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def resolve(name: str) -> str:
  """`name` itself, or for a hub id that is no path here its snapshot folder: from the
  cache, downloaded where there is a network. A UserError (one line) when it cannot be
  had: offline and not cached, no such model, huggingface_hub missing."""
  name = os.fspath(name)
  if not is_hub_id(name):
    return name
  try:
    import huggingface_hub
    from huggingface_hub import errors as hub_errors
  except ImportError:
    raise UserError(f"model folder {name!r} does not exist, and reading it as a Hugging Face hub "
                    "id needs huggingface_hub: pip install -r requirements.txt (or pip install "
                    "huggingface_hub), or pass a local folder.") from None
  cache = os.environ.get("HF_HUB_CACHE") or None
  offline = _offline()
  try:
    return huggingface_hub.snapshot_download(name, cache_dir=cache, local_files_only=offline,
                                             allow_patterns=FILES)
  except (hub_errors.LocalEntryNotFoundError, hub_errors.OfflineModeIsEnabled):
    where = cache or huggingface_hub.constants.HF_HUB_CACHE
    why = "HF_HUB_OFFLINE is set" if offline else "the hub cannot be reached"
    raise UserError(f"model folder {name!r} does not exist, and as a Hugging Face hub id it is "
                    f"not in the cache {where!r} ({why}): download it where there is a network "
                    f"(hf download {name}), or pass a local folder.") from None
  except hub_errors.RepositoryNotFoundError:
    raise UserError(f"model folder {name!r} does not exist, nor is there such a model on the "
                    "Hugging Face hub (or it is private: hf auth login): check the path or the "
                    "id.") from None
  except (hub_errors.HfHubHTTPError, OSError, ValueError) as e:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    raise UserError(f"model folder {name!r} does not exist, and downloading it from the Hugging "
                    f"Face hub failed ({first}): check the id and the network, or pass a local "
                    "folder.") from None
