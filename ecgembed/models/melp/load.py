"""Read the published MELP checkpoint layout into :class:`MELPEncoder`, strictly.

The released ``fuyingw/MELP_Encoder`` folder holds ``model.safetensors`` (180 BF16 tensors +
one I64 counter) and ``config.json``. Loading (``specs/melp.md`` §e):

1. fetch the file through :mod:`ecgembed.weights` (local path, ``file://``, ``s3://``,
   ``http(s)://``, ``hf://``; cached per node); its sha256 becomes ``model_version``;
2. open it with the ``safetensors`` package (never ``torch.load``: no pickle is executed);
3. map every module parameter to its checkpoint key with :data:`KEY_TABLE`; the positional
   conv's weight-norm pair is listed in :data:`WEIGHT_NORM` and folded once here; legacy
   ``weight_g``/``weight_v`` names are accepted through :data:`LEGACY_NAMES`;
4. accept and skip the 12 training-only tensors (:data:`TRAINING_ONLY`), the text side of a
   full MELP checkpoint (:data:`OTHER_TOWER_PREFIXES`) and, when token-level output is off, the
   caption pooler (:data:`TOKEN_LEVEL_PREFIXES`);
5. fail with one :class:`~ecgembed.errors.WeightsError` that lists every missing, unexpected
   or mis-shaped key, so a wrong file (the ECGFM-KED ``.pt``, a truncated download) never
   half-loads;
6. upcast BF16 to fp32 exactly (``load_encoder`` keeps bf16 on request; ``load_melp`` always
   runs fp32 weights and picks the compute with its ``precision``).

``n_queries_contrast`` / ``n_queries_caption`` come from the query tensors' shapes, not from
``config.json`` or code defaults (which disagree: 14 vs 13 vs 12).
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ecgembed import storage, weights
from ecgembed.errors import WeightsError

from .config import DEFAULT_WEIGHTS_URI, MELPConfig
from .model import MELPEncoder

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"

_BB = "ecg_encoder.ecg_encoder."  # backbone: wrapper attribute + ECGFMModel attribute
_HEADS = "ecg_encoder."  # heads: ECGFMModel attributes under the released wrapper

# module key (regex, full match) -> checkpoint key; first matching row wins.
KEY_TABLE: list[tuple[str, str]] = [
    # conv stack: fairseq's Sequential(conv, dropout, norm, GELU) indices become names
    (r"backbone\.feature_extractor\.conv_layers\.(\d+)\.conv\.weight",
     _BB + r"feature_extractor.conv_layers.\1.0.weight"),
    (r"backbone\.feature_extractor\.conv_layers\.0\.norm\.(weight|bias)",
     _BB + r"feature_extractor.conv_layers.0.2.\1"),
    # positional conv: Sequential(conv, SamePad, GELU) -> one module (its weight: WEIGHT_NORM below)
    (r"backbone\.conv_pos\.conv\.bias", _BB + "conv_pos.pos_conv.0.bias"),
    # layer_norm, post_extract_proj, encoder.layer_norm, encoder.layers.N.*: same names
    (r"backbone\.(.+)", _BB + r"\1"),
    # attn_pool_contrast.*, ln_contrast.*, proj_contrast, attn_pool_caption.*, ln_caption.*: same names
    (r"(.+)", _HEADS + r"\1"),
]

# module weight -> (g, v) checkpoint keys of torch's weight-norm parametrisation (dim=2):
# weight = g * v / ||v||, the norm over dims (0, 1) separately for each kernel tap.
WEIGHT_NORM: dict[str, tuple[str, str]] = {
    "backbone.conv_pos.conv.weight": (
        _BB + "conv_pos.pos_conv.0.parametrizations.weight.original0",  # g: (1, 1, 128)
        _BB + "conv_pos.pos_conv.0.parametrizations.weight.original1",  # v: (768, 48, 128)
    ),
}

# names written by the older torch.nn.utils.weight_norm (or converters) -> current names
LEGACY_NAMES: dict[str, str] = {
    _BB + "conv_pos.pos_conv.0.weight_g": _BB + "conv_pos.pos_conv.0.parametrizations.weight.original0",
    _BB + "conv_pos.pos_conv.0.weight_v": _BB + "conv_pos.pos_conv.0.parametrizations.weight.original1",
}

# present in the released file, unused at inference (wav2vec2 pre-training and CLIP training)
TRAINING_ONLY: frozenset[str] = frozenset({
    _BB + "mask_emb",
    _BB + "quantizer.vars",
    _BB + "quantizer.weight_proj.weight",
    _BB + "quantizer.weight_proj.bias",
    _BB + "project_q.weight",
    _BB + "project_q.bias",
    _BB + "final_proj.weight",
    _BB + "final_proj.bias",
    _HEADS + "logit_scale",
    _HEADS + "bn.running_mean",
    _HEADS + "bn.running_var",
    _HEADS + "bn.num_batches_tracked",
})

# a full MELP (Lightning) state dict also holds the text side; the ECG loader skips it
OTHER_TOWER_PREFIXES: tuple[str, ...] = ("lm_model.", "proj_t.", "sent_proj.", "text_decoder.", "logit_scale")

# caption pooler: loaded only for token-level output
TOKEN_LEVEL_PREFIXES: tuple[str, ...] = (_HEADS + "attn_pool_caption.", _HEADS + "ln_caption.")

_MAX_LISTED = 12  # keys named per category in an error message


def map_key(table: list[tuple[str, str]], module_key: str) -> str:
    """The checkpoint name of one module parameter under a (regex, template) table."""
    for pattern, template in table:
        match = re.fullmatch(pattern, module_key)
        if match:
            return match.expand(template)
    raise KeyError(f"no checkpoint name for parameter {module_key}")


def checkpoint_key(module_key: str) -> str:
    """The published checkpoint name of one encoder parameter (see :data:`KEY_TABLE`)."""
    return map_key(KEY_TABLE, module_key)


def fold_weight_norm(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """g * v / ||v|| with the norm over dims (0, 1) per tap, in fp32 (torch ``weight_norm(dim=2)``)."""
    g, v = g.float(), v.float()
    return v * (g / v.norm(dim=(0, 1), keepdim=True))  # (768, 48, 128); same order as torch._weight_norm


# ---------------------------------------------------------------------------------------------
# safetensors reading


def _sniff(path: Path, uri: str) -> None:
    """Name the usual wrong files before safetensors reports a bare header error."""
    with open(path, "rb") as handle:
        head = handle.read(8)
    if head.startswith(b"PK\x03\x04"):
        raise WeightsError(
            f"{uri}: not a safetensors file but a ZIP archive (a torch.save checkpoint such as the "
            f"ECGFM-KED .pt?); MELP weights are the {WEIGHTS_FILE} of fuyingw/MELP_Encoder"
        )
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise WeightsError(f"{uri}: not a safetensors file but a Python pickle (legacy torch.save?)")
    if len(head) < 8:
        raise WeightsError(f"{uri}: not a safetensors file (only {len(head)} bytes)")


def open_safetensors(path: Path, uri: str):
    """``safe_open`` with every failure turned into a :class:`WeightsError` naming the file."""
    _sniff(path, uri)
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except SafetensorError as exc:
        size = path.stat().st_size
        raise WeightsError(
            f"{uri}: not a readable safetensors file ({size} bytes; truncated or corrupt?): {exc}"
        ) from exc


def _query_count(shapes: dict[str, tuple[int, ...]], key: str, default: int) -> int:
    shape = shapes.get(key)
    return shape[0] if shape is not None and len(shape) == 2 else default


def read_index(f) -> dict[str, tuple[str, tuple[int, ...], str]]:
    """``{key: (name in the file, shape, dtype)}`` of an open safetensors file; legacy names mapped."""
    entries = {}
    for name in f.keys():
        spec = f.get_slice(name)
        entries[LEGACY_NAMES.get(name, name)] = (name, tuple(spec.get_shape()), spec.get_dtype())
    return entries


def match_keys(
    entries: dict[str, tuple[str, tuple[int, ...], str]],
    wanted: dict[str, tuple[str, tuple[int, ...]]],
    skipped: Callable[[str], bool],
    uri: str,
    what: str,
) -> None:
    """Strict key check: every wanted key present with its shape and a float dtype, nothing else
    but skipped keys. One :class:`WeightsError` lists every problem (``what`` names the layout)."""
    missing = sorted(k for k in wanted if k not in entries)
    unexpected = sorted(entries[k][0] for k in entries if k not in wanted and not skipped(k))
    wrong = []
    for key, (_, shape) in wanted.items():
        if key in entries:
            name, got, dtype = entries[key]
            if got != shape:
                wrong.append(f"{name} {list(got)} (expected {list(shape)})")
            elif dtype not in ("BF16", "F16", "F32", "F64"):
                wrong.append(f"{name} dtype {dtype} (expected a float)")
    if not (missing or unexpected or wrong):
        return
    lines = [f"{uri}: not {what}"]
    for title, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes/dtypes", wrong)):
        if keys:
            shown = ", ".join(keys[:_MAX_LISTED])
            more = f" ... (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
            lines.append(f"  {len(keys)} {title}: {shown}{more}")
    raise WeightsError("\n".join(lines))


# ---------------------------------------------------------------------------------------------
# the encoder


def load_encoder(
    path: str | Path,
    *,
    token_level: bool = False,
    dtype: torch.dtype = torch.float32,
    uri: str | None = None,
) -> MELPEncoder:
    """A :class:`MELPEncoder` (eval mode, no grad, on CPU) from a local ``model.safetensors``.

    ``uri`` is only used in error messages (defaults to the path).
    """
    path = Path(path)
    uri = uri or str(path)
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"dtype must be torch.float32 or torch.bfloat16, not {dtype}")
    with open_safetensors(path, uri) as f:
        entries = read_index(f)
        shapes = {key: shape for key, (_, shape, _) in entries.items()}
        cfg = MELPConfig()
        cfg = replace(
            cfg,
            n_queries_contrast=_query_count(shapes, _HEADS + "attn_pool_contrast.query", cfg.n_queries_contrast),
            n_queries_caption=_query_count(shapes, _HEADS + "attn_pool_caption.query", cfg.n_queries_caption),
        )
        with torch.device("meta"):  # shapes only: the real tensors are assigned below
            encoder = MELPEncoder(cfg, token_level=token_level)

        # checkpoint key -> (module key, expected shape); a weight-norm pair gives two checkpoint keys
        wanted: dict[str, tuple[str, tuple[int, ...]]] = {}
        for module_key, param in encoder.state_dict().items():
            shape = tuple(param.shape)
            if module_key in WEIGHT_NORM:
                g_key, v_key = WEIGHT_NORM[module_key]
                wanted[g_key] = (module_key, (1, 1, shape[2]))
                wanted[v_key] = (module_key, shape)
            else:
                wanted[checkpoint_key(module_key)] = (module_key, shape)

        def skipped(key: str) -> bool:
            return (key in TRAINING_ONLY or key.startswith(OTHER_TOWER_PREFIXES)
                    or (not token_level and key.startswith(TOKEN_LEVEL_PREFIXES)))

        match_keys(entries, wanted, skipped, uri, "a MELP ECG checkpoint in the released fuyingw/MELP_Encoder layout")
        raw = {key: f.get_tensor(entries[key][0]).float() for key in wanted}  # BF16 -> fp32 is exact

    state: dict[str, torch.Tensor] = {}
    for key, (module_key, _) in wanted.items():
        if module_key in WEIGHT_NORM:
            g_key, v_key = WEIGHT_NORM[module_key]
            state[module_key] = fold_weight_norm(raw[g_key], raw[v_key])  # once, at load
        else:
            state[module_key] = raw[key]
    bad = sorted(checkpoint_key(k) for k, t in state.items() if not torch.isfinite(t).all())
    if bad:
        raise WeightsError(f"{uri}: non-finite values (NaN/inf) in {', '.join(bad)}")
    state = {k: t.to(dtype) for k, t in state.items()}
    encoder.load_state_dict(state, strict=True, assign=True)
    return encoder.eval().requires_grad_(False)


def read_config_json(path: str | Path) -> dict:
    """The release's ``config.json`` (informational: the tensor shapes define the model)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{path}: unreadable {CONFIG_FILE}: {exc}") from exc


def check_config(config: dict, encoder: MELPEncoder, uri: str) -> None:
    """Cross-check ``config.json`` against the tensors; the tensors win (logged, not raised)."""
    if config.get("model_type", "melp") != "melp":
        raise WeightsError(f"{uri}: model_type {config.get('model_type')!r} is not 'melp'")
    cfg = encoder.config
    for field in ("n_queries_contrast", "n_queries_caption", "shared_emb_dim", "num_leads"):
        value = config.get(field)
        ours = cfg.n_leads if field == "num_leads" else getattr(cfg, field)
        if value is not None and value != ours:
            log.warning("%s: config.json says %s=%s but the tensors give %s; using the tensors",
                        uri, field, value, ours)


# a remote URI ending in one of these names a file; anything else is a folder
_FILE_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


def resolve_weights_uri(uri: str) -> tuple[str, str | None]:
    """``(weights file URI, config.json URI or None)`` for a file or folder URI.

    A local path is a file unless it is a directory; a remote URI is a file when its last part
    ends in a checkpoint suffix (``.safetensors``, ``.pt``...). A file's config.json is not
    looked for. Anything else (``s3://bucket/prefix``, ``https://host/dir``, ``hf://org/repo``)
    is a folder holding ``model.safetensors`` and, optionally, ``config.json``.
    """
    uri = str(uri)
    if "://" not in uri or uri.startswith("file://"):
        is_file = not Path(uri.removeprefix("file://")).expanduser().is_dir()
    else:
        is_file = uri.rstrip("/").rsplit("/", 1)[-1].lower().endswith(_FILE_SUFFIXES)
    if is_file:
        return uri, None
    return storage.join(uri, WEIGHTS_FILE), storage.join(uri, CONFIG_FILE)


def fetch_encoder(
    uri: str = DEFAULT_WEIGHTS_URI,
    *,
    token_level: bool = False,
) -> tuple[MELPEncoder, str]:
    """``(fp32 encoder, model_version)`` from any supported URI; ``model_version`` = the file's sha256."""
    file_uri, config_uri = resolve_weights_uri(uri)
    fetched = weights.fetch(file_uri)
    encoder = load_encoder(fetched.path, token_level=token_level, uri=file_uri)
    if config_uri is not None:
        try:
            config_path = weights.fetch(config_uri).path
        except WeightsError as exc:  # config.json is optional: the tensors define the model
            log.info("%s: no usable %s (%s); using the tensor shapes", uri, CONFIG_FILE, exc)
        else:
            check_config(read_config_json(config_path), encoder, config_uri)
    return encoder, fetched.sha256
