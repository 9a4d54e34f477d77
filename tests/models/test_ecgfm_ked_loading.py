"""ECGFM-KED checkpoint loading: explicit key mapping, refusal of wrong files and of pickled code,
and the same model from local disk, S3 and HTTP."""

from __future__ import annotations

import collections
import functools
import re

import pytest
import torch
from torch import nn

from ecgembed.errors import WeightsError
from ecgembed.models.ecgfm_ked import load_ked, load_ked_text
from ecgembed.models.ecgfm_ked.checkpoint import load_section
from ecgembed.models.ecgfm_ked.tqn import QueryNetwork
from ecgembed.models.ecgfm_ked.xresnet import XResNet1d


@pytest.fixture(scope="module")
def ckpt(ked_weights_file):
    return torch.load(ked_weights_file, map_location="cpu", weights_only=True, mmap=True)


# --------------------------------------------------------------------------- the mapping tables
def test_published_layout_maps_onto_our_modules(ckpt):
    """1224 ECG keys = 630 ours + 594 convpath aliases; 135 TQN keys = 132 ours + decoder.norm (2) + logit_scale."""
    encoder, tqn = XResNet1d(), QueryNetwork()
    assert len(ckpt["ecg_model"]) == 1224 and len(encoder.state_dict()) == 630
    assert len(ckpt["model"]) == 135 and len(tqn.state_dict()) == 132
    load_section(ckpt, "ecg_model", encoder, "ref")
    load_section(ckpt, "model", tqn, "ref")
    assert torch.equal(tqn.decoder_norm.weight, ckpt["model"]["decoder.norm.weight"])
    assert torch.equal(encoder[6][0].convs[1][0].weight, ckpt["ecg_model"]["6.0.convpath.0.1.0.weight"])
    n_params = sum(p.numel() for p in encoder.parameters()), sum(p.numel() for p in tqn.parameters())
    assert n_params == (7_865_984, 45_708_547 - 1)   # the manifest's counts; TQN less its unused logit_scale


def _edited(section: dict, drop=(), add=None, reshape=None) -> dict:
    out = collections.OrderedDict((k, v) for k, v in section.items() if k not in drop)
    out.update(add or {})
    for key, shape in (reshape or {}).items():
        out[key] = torch.zeros(shape)
    return out


@pytest.mark.parametrize("edit, message", [
    (dict(drop=["7.2.convs.2.1.weight", "7.2.convpath.0.2.1.weight"]), r"missing: 1 keys: 7\.2\.convs\.2\.1\.weight"),
    (dict(add={"8.0.weight": torch.zeros(1)}), r"unexpected: 1 keys: 8\.0\.weight"),
    (dict(reshape={"0.0.weight": (32, 12, 7)}),
     r"wrong shape: 1 keys: 0\.0\.weight \(32, 12, 7\) \(expected \(32, 12, 5\)\)"),
    (dict(add={"4.0.convpath.0.0.0.weight": torch.ones(64, 64, 1)}), r"should repeat 4\.0\.convs\.0\.0\.weight"),
])
def test_ecg_section_mismatch_lists_the_keys(ckpt, edit, message):
    bad = {"ecg_model": _edited(ckpt["ecg_model"], **edit)}
    with pytest.raises(WeightsError, match=message):
        load_section(bad, "ecg_model", XResNet1d(), "bad.pt")


def test_tqn_section_mismatch_lists_the_keys(ckpt):
    bad = {"model": _edited(ckpt["model"], drop=[f"decoder.layers.6.{k}" for k in ("linear1.weight", "linear1.bias")])}
    with pytest.raises(WeightsError, match=r"missing: 2 keys: decoder\.layers\.6\.linear1\.weight"):
        load_section(bad, "model", QueryNetwork(), "bad.pt")


# --------------------------------------------------------------------------- wrong files
def test_dict_without_ecg_model_is_refused(tmp_path, tmp_cache, ckpt):
    path = tmp_path / "tqn_only.pt"
    torch.save({"model": dict(ckpt["model"]), "epoch": 3}, path)
    with pytest.raises(WeightsError, match=r"no 'ecg_model' entry; top-level keys are \['epoch', 'model'\]"):
        load_ked(str(path))


def test_melp_safetensors_is_refused(melp_weights_dir, tmp_cache):
    with pytest.raises(WeightsError, match="safetensors file"):
        load_ked(str(melp_weights_dir / "model.safetensors"))
    with pytest.raises(WeightsError, match="is a folder"):
        load_ked(str(melp_weights_dir))


def test_garbage_and_non_dict_files_are_refused(tmp_path, tmp_cache):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all" * 100)
    with pytest.raises(WeightsError, match="not a .*PyTorch checkpoint"):
        load_ked(str(garbage))
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(WeightsError, match="holds a Tensor, expected the ECGFM-KED checkpoint dict"):
        load_ked(str(tensor))
    section = tmp_path / "section.pt"
    torch.save({"ecg_model": [1, 2], "model": {}}, section)
    with pytest.raises(WeightsError, match="'ecg_model' is a list, expected a state dict"):
        load_ked(str(section))


class _Holder:  # a Python object that torch can only unpickle by running code
    def __init__(self):
        self.fn = functools.partial(print, "hello")


@pytest.mark.parametrize("payload, culprit", [
    (lambda: nn.Linear(2, 2), r"torch\.nn\.modules\.linear\.Linear"),
    (lambda: {"ecg_model": _Holder(), "model": {}}, r"_Holder"),
    (lambda: {"ecg_model": {"0.0.weight": torch.zeros(1)}, "hook": functools.partial(print, 1)}, r"functools\.partial"),
])
def test_pickled_code_is_refused_never_executed(tmp_path, tmp_cache, payload, culprit):
    path = tmp_path / "code.pt"
    torch.save(payload(), path)
    with pytest.raises(WeightsError, match="refused: the file contains pickled code") as info:
        load_ked(str(path))
    assert "weights_only=True" in str(info.value) and re.search(culprit, str(info.value))
    with pytest.raises(WeightsError, match="refused: the file contains pickled code"):
        load_ked_text(str(path), "any/model-id")  # the checkpoint is checked before the text model


def test_text_model_source_errors(ked_weights_file, tmp_path, tmp_cache):
    with pytest.raises(WeightsError, match="not a folder, URI or Hugging Face model id"):
        load_ked_text(str(ked_weights_file), str(tmp_path / "nope" / "tiny_bert"))
    (tmp_path / "wide").mkdir()
    (tmp_path / "wide" / "config.json").write_text('{"model_type": "bert", "hidden_size": 1024}')
    (tmp_path / "wide" / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")
    with pytest.raises(WeightsError, match="hidden_size 1024, ECGFM-KED needs 768"):
        load_ked_text(str(ked_weights_file), str(tmp_path / "wide"))


def test_text_encoder_shapes_must_match_the_config(ked_weights_file, shared_dir, tmp_path, tmp_cache):
    """The reference .pt holds a 2-layer BERT: a 4-layer config lists the missing layers."""
    import json

    src = shared_dir / "conformance" / "ecgfm-ked" / "tiny_bert"
    (tmp_path / "bert4").mkdir()
    config = json.loads((src / "config.json").read_text()) | {"num_hidden_layers": 4}
    (tmp_path / "bert4" / "config.json").write_text(json.dumps(config))
    (tmp_path / "bert4" / "vocab.txt").write_bytes((src / "vocab.txt").read_bytes())
    missing = r"section 'text_encoder'.*missing: 32 keys: bert_model\.encoder\.layer\.2\."
    with pytest.raises(WeightsError, match=missing):
        load_ked_text(str(ked_weights_file), str(tmp_path / "bert4"))


# --------------------------------------------------------------------------- sources
@pytest.fixture(scope="module")
def disk_model(ked_weights_file, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:  # keep the sha256 memo out of ~/.cache
        mp.setenv("ECGEMBED_CACHE", str(tmp_path_factory.mktemp("ked_cache")))
        return load_ked(str(ked_weights_file))


def _assert_same_model(remote, local):
    assert remote.model_version == local.model_version
    want, got = local.state_dict(), remote.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_s3_loads_the_same_model_as_disk(disk_model, ked_weights_file, s3, tmp_cache):
    s3.fs.put_file(str(ked_weights_file), f"{s3.bucket}/models/ked_ref.pt")
    _assert_same_model(load_ked(s3.url("models/ked_ref.pt")), disk_model)


def test_https_loads_the_same_model_as_disk(disk_model, ked_weights_file, http_server, tmp_cache):
    base = http_server(ked_weights_file.parent)
    _assert_same_model(load_ked(f"{base}/{ked_weights_file.name}"), disk_model)
