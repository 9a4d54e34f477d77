"""Read the released ECGFM-KED ``.pt`` safely and map its names onto our modules.

The file (``specs/ecgfm-ked.md`` §e) is a plain dict written by ``torch.save``:
``{'model': TQN, 'ecg_model': xresnet trunk, 'text_encoder': BERT + MLP, 'optimizer',
'lr_scheduler', 'config', 'epoch'}``. It is read with ``torch.load(..., weights_only=True)``
and nothing else: a file that needs code to unpickle (a pickled module, a lambda, any class)
is refused, never "retried unsafely".

Our modules use the published key names, so the mapping is short and explicit (the
``ALIASES`` and ``UNUSED`` tables below). Every other key must match one of our tensors by
name and shape; anything missing, unexpected or mis-shaped fails the load with the keys
listed (nanoGPT's ``from_pretrained`` habit): a checkpoint never half-loads.
"""

from __future__ import annotations

import pickle
import re
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ecgembed import storage
from ecgembed.errors import WeightsError
from ecgembed.weights import FetchedFile, fetch

# Keys that repeat another key of the same section: in the original one module is registered
# under two names, so torch.save writes its tensors twice (sharing storage). We own each
# tensor once; the repeat is dropped after checking it equals the key it repeats.
ALIASES: dict[str, list[tuple[re.Pattern, str]]] = {
    # ResBlock keeps its conv path as both `convs` and `convpath = Sequential(convs)`: 594 keys.
    "ecg_model": [(re.compile(r"^(\d+\.\d+)\.convpath\.0\.(.+)$"), r"\1.convs.\2")],
    # TransformerDecoder(norm=decoder_norm) stores TQNModel.decoder_norm again as decoder.norm.
    "model": [(re.compile(r"^decoder\.norm\.(weight|bias)$"), r"decoder_norm.\1")],
    "text_encoder": [],
}

# Keys in the file that inference does not read; dropped when present.
UNUSED: dict[str, frozenset[str]] = {
    "ecg_model": frozenset(),
    "model": frozenset({"logit_scale"}),                      # TQNModel.logit_scale, never used
    "text_encoder": frozenset({
        "logit_scale",                                        # CLP_clinical.logit_scale, training only
        "bert_model.embeddings.position_ids",                 # 0..511; not a saved buffer in transformers>=4.31
    }),
}

_LIST_AT_MOST = 8
# torch's weights-only unpickler names a class or function it will not import/call: the file needs
# code to load. Other unpickler errors ("Unsupported operand ...") mean the bytes are not a pickle.
_CODE_REFUSED = re.compile(r"GLOBAL|Can only (create new object|build)|persistent_load", re.IGNORECASE)


def fetch_checkpoint(uri: str) -> FetchedFile:
    """The checkpoint file, local or downloaded once (``ecgembed.weights.fetch``); sha256 included."""
    protocol, path = storage.split(uri)
    if protocol == "file" and Path(path).is_dir():
        raise WeightsError(f"{uri}: is a folder; ECGFM-KED needs the .pt checkpoint file itself")
    return fetch(uri)


def read_checkpoint(path: Path, uri: str) -> Mapping:
    """The checkpoint dict, loaded with ``weights_only=True`` (memory-mapped when possible)."""
    path = Path(path)
    if _is_safetensors(path):
        raise WeightsError(
            f"{uri}: is a safetensors file (for example the MELP release), not the ECGFM-KED "
            "checkpoint (a torch .pt holding 'ecg_model', 'model' and 'text_encoder')"
        )
    try:
        # mmap: the released file is 1.3 GB, half of it optimizer state we never touch.
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        if _CODE_REFUSED.search(str(exc)):
            raise WeightsError(
                f"{uri}: refused: the file contains pickled code or Python objects, not only tensors "
                f"({_unpickler_reason(exc)}). ecgembed loads checkpoints with weights_only=True and "
                "never runs code from a model file; re-save the state dicts as plain tensors."
            ) from None
        raise WeightsError(f"{uri}: not a PyTorch checkpoint ({_unpickler_reason(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a damaged/foreign file
        raise WeightsError(f"{uri}: not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, Mapping):
        raise WeightsError(f"{uri}: holds a {type(ckpt).__name__}, expected the ECGFM-KED checkpoint dict")
    return ckpt


def load_section(ckpt: Mapping, section: str, module: nn.Module, uri: str) -> None:
    """Load ``ckpt[section]`` into ``module`` strictly, through the alias and unused tables."""
    if section not in ckpt:
        raise WeightsError(
            f"{uri}: no {section!r} entry; top-level keys are {sorted(map(str, ckpt))}. "
            "Expected the ECGFM-KED release (best_valid_all_increase_with_augment_epoch_3.pt)."
        )
    published = ckpt[section]
    if not isinstance(published, Mapping):
        raise WeightsError(f"{uri}: {section!r} is a {type(published).__name__}, expected a state dict")
    state: dict[str, torch.Tensor] = {}
    for key, value in published.items():
        if not isinstance(value, torch.Tensor):
            raise WeightsError(f"{uri}: {section}.{key} is a {type(value).__name__}, expected a tensor")
        if key in UNUSED[section]:
            continue
        original = _alias_target(section, key)
        if original is not None:
            if original not in published or not torch.equal(value, published[original]):
                raise WeightsError(f"{uri}: {section}.{key} should repeat {original} but differs from it")
            continue
        state[key] = value

    wanted = module.state_dict()
    missing = [k for k in wanted if k not in state]
    unexpected = [k for k in state if k not in wanted]
    misshaped = [f"{k} {tuple(state[k].shape)} (expected {tuple(wanted[k].shape)})"
                 for k in wanted if k in state and state[k].shape != wanted[k].shape]
    problems = [f"{name}: {_listing(keys)}" for name, keys in
                (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped)) if keys]
    if problems:
        raise WeightsError(f"{uri}: section {section!r} does not fit the ECGFM-KED model; " + "; ".join(problems))
    module.load_state_dict(state, strict=True)  # copies (and casts) into our own parameters


def _alias_target(section: str, key: str) -> str | None:
    for pattern, replacement in ALIASES[section]:
        if pattern.match(key):
            return pattern.sub(replacement, key)
    return None


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_LIST_AT_MOST])
    more = len(keys) - _LIST_AT_MOST
    return f"{len(keys)} keys: {shown}" + (f", ... and {more} more" if more > 0 else "")


def _is_safetensors(path: Path) -> bool:
    """safetensors: 8-byte little-endian header length, then a JSON object."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    return 0 < header_len <= path.stat().st_size - 8


def _unpickler_reason(exc: Exception) -> str:
    """torch's one-line reason, e.g. 'Unsupported global: GLOBAL torch.nn.modules.linear.Linear ...'."""
    match = re.search(r"WeightsUnpickler error:\s*([^\n]*)", str(exc))
    reason = match.group(1) if match else str(exc).splitlines()[0]
    return reason.split(". Please use")[0].strip()
