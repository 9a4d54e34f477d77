"""How a model package runs a batch on its device: the precision contexts and the host transfers.

Shared by ``models/melp`` and ``models/ecgfm_ked``, which each decide *where* to use them (their
precision policy, written down in their ``precision_tag``). Nothing here knows a model.

Precision (``"fp32"`` | ``"bf16"``, chosen once when a model is loaded):

- :func:`ieee_fp32` is a block of true IEEE fp32: autocast off and, on CUDA, TF32 off for
  matmuls and cuDNN convolutions. torch's own default lets cuDNN convolutions use TF32 (10-bit
  mantissa); emulated on CPU, that alone moves MELP's embedding to cosine 0.99995 and ECGFM-KED's
  zero-shot scores by 1.3e-3 on the e2e records, so "fp32" here means fp32. The TF32 switches
  are process-wide in torch: the block sets them and restores the previous values on exit,
  which is safe because an actor runs one batch at a time.
- :func:`tf32` is a block of fp32 tensors with TF32 allowed in CUDA matmuls and cuDNN
  convolutions (inputs rounded to a 10-bit mantissa, fp32 accumulation: 3 bits more than bf16).
  Without CUDA there is no TF32 and the block is IEEE fp32.
- :func:`bf16_autocast` is a block under bf16 autocast (weights stay fp32; matmuls and
  convolutions run in bf16, LayerNorm/softmax and friends in fp32, as torch's autocast lists say).

Transfers: :func:`to_device` moves a host batch to the device pinned and non-blocking (pinned
only on CUDA), :func:`features_to_device` uploads class features once per actor, and
:func:`to_host` brings every output of a batch back in ONE device-to-host copy.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str) -> str:
    """``precision`` itself, or a ValueError naming it."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    return precision


@contextlib.contextmanager
def _fp32_block(device: torch.device, allow_tf32: bool) -> Iterator[None]:
    """No autocast, and on CUDA TF32 set to ``allow_tf32`` for matmuls and cuDNN convolutions
    (process-wide switches in torch: set for the block, restored on exit)."""
    with torch.autocast(device.type, enabled=False):
        if device.type != "cuda":
            yield
            return
        matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
        torch.backends.cudnn.allow_tf32 = allow_tf32
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32 = matmul
            torch.backends.cudnn.allow_tf32 = cudnn


def ieee_fp32(device: torch.device) -> contextlib.AbstractContextManager[None]:
    """IEEE fp32 for the block: no autocast, and on CUDA no TF32 in matmuls or cuDNN convolutions."""
    return _fp32_block(device, allow_tf32=False)


def tf32(device: torch.device) -> contextlib.AbstractContextManager[None]:
    """fp32 tensors with TF32 matmuls and cuDNN convolutions on CUDA (IEEE fp32 elsewhere); no autocast."""
    return _fp32_block(device, allow_tf32=True)


def bf16_autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on ``device`` (CPU autocast too: slower there, same rounding model)."""
    return torch.autocast(device.type, dtype=torch.bfloat16)


def to_device(batch: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host float32 batch on ``device``: through pinned memory and non-blocking on CUDA."""
    x = np.ascontiguousarray(batch, dtype=np.float32)
    if device.type == "cuda":
        pinned = torch.empty(x.shape, dtype=torch.float32, pin_memory=True)  # cached by torch's host allocator
        pinned.numpy()[...] = x  # the one host copy, into page-locked memory
        return pinned.to(device, non_blocking=True)  # overlaps the host until the next sync
    return torch.from_numpy(x if x.flags.writeable else x.copy())  # read-only (e.g. zero-copy Ray block): copy


def features_to_device(features: Sequence, device: torch.device, dim: int, model: str) -> list[torch.Tensor]:
    """One float32 (C_i, dim) tensor on ``device`` per label set, from arrays or tensors.

    Tensors already on the device in float32 are returned as they are (no copy), so an actor
    that called this once at start-up passes its result to every batch for free.
    """
    if isinstance(features, (np.ndarray, torch.Tensor)):
        raise TypeError(
            f"{model}: class features are a list with one (C, {dim}) array per label set, "
            f"not one {type(features).__name__} of shape {tuple(features.shape)}; wrap it in a list"
        )
    out = []
    for i, f in enumerate(features):
        t = torch.as_tensor(f, dtype=torch.float32, device=device)
        if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] != dim:
            raise ValueError(f"{model}: class_features[{i}] must be (C, {dim}) with C >= 1 (one label set), "
                             f"got {tuple(t.shape)}")
        out.append(t)
    return out


def to_host(parts: dict[str, torch.Tensor | list[torch.Tensor]]) -> dict[str, np.ndarray | list[np.ndarray]]:
    """Every output of a batch in one device-to-host copy, split back into ``parts``' layout.

    ``parts`` maps a name to a (B, ...) tensor or a list of them (zero-shot scores, one per
    label set). They are flattened to (B, n), concatenated on the device as float32, copied
    once, and cut into contiguous float32 numpy arrays of the original shapes.
    """
    flat: list[torch.Tensor] = []
    for value in parts.values():
        flat.extend(value if isinstance(value, list) else [value])
    if not flat:
        return {}
    widths = [math.prod(t.shape[1:]) for t in flat]
    host = torch.cat([t.reshape(t.shape[0], n).float() for t, n in zip(flat, widths)], dim=1).cpu().numpy()  # (B, sum n)
    pieces, start = [], 0
    for t, n in zip(flat, widths):
        pieces.append(np.ascontiguousarray(host[:, start:start + n]).reshape(t.shape))
        start += n
    out: dict[str, np.ndarray | list[np.ndarray]] = {}
    it = iter(pieces)
    for name, value in parts.items():
        out[name] = [next(it) for _ in value] if isinstance(value, list) else next(it)
    return out
