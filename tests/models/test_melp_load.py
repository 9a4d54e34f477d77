"""MELP checkpoint loading: every URI kind gives the same model, and wrong files fail clearly."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from ecgembed.errors import WeightsError
from ecgembed.models.melp import load_encoder, load_melp

SHA = "337f3011c15e0e3215433dff706b4b214d1477eba52c16004f112fddac2ca88f"  # conformance README
BB = "ecg_encoder.ecg_encoder."


@pytest.fixture(scope="module")
def one_record(shared_dir):
    return np.load(shared_dir / "conformance" / "melp" / "inputs.npy")[:1]


@pytest.fixture(scope="module")
def disk_output(melp_weights_dir, one_record):
    encoder = load_encoder(melp_weights_dir / "model.safetensors")
    with torch.inference_mode():
        return encoder(torch.from_numpy(one_record))["embedding"].numpy()


@pytest.fixture(scope="module")
def checkpoint(melp_weights_dir):
    """The stand-in checkpoint as a dict (for writing damaged variants)."""
    return load_file(melp_weights_dir / "model.safetensors")


def _same_as_disk(model, one_record, disk_output):
    assert model.model_version == SHA
    np.testing.assert_array_equal(model.embed(one_record)["embedding"], disk_output)


def test_local_file_and_folder_and_file_uri(melp_weights_dir, one_record, disk_output, tmp_cache):
    folder = load_melp(str(melp_weights_dir))
    _same_as_disk(folder, one_record, disk_output)
    for uri in (str(melp_weights_dir / "model.safetensors"), f"file://{melp_weights_dir}/model.safetensors"):
        model = load_melp(uri)
        assert model.model_version == SHA
        for (name, a), (_, b) in zip(model.state_dict().items(), folder.state_dict().items()):
            assert torch.equal(a, b), name


def test_s3_gives_the_same_model(s3, melp_weights_dir, one_record, disk_output, tmp_cache):
    for name in ("model.safetensors", "config.json"):
        s3.fs.put_file(str(melp_weights_dir / name), f"{s3.bucket}/melp/{name}")
    s3.fs.invalidate_cache()
    _same_as_disk(load_melp(s3.url("melp")), one_record, disk_output)  # folder URI
    _same_as_disk(load_melp(s3.url("melp/model.safetensors")), one_record, disk_output)  # file URI


def test_https_gives_the_same_model(http_server, melp_weights_dir, one_record, disk_output, tmp_cache):
    base = http_server(melp_weights_dir)
    _same_as_disk(load_melp(base), one_record, disk_output)


def test_hf_uri_through_a_local_hub(hf_hub, melp_weights_dir, tmp_path, one_record, disk_output, tmp_cache):
    """``hf://fuyingw/MELP_Encoder`` (the default) resolves to model.safetensors + config.json."""
    repo = tmp_path / "hub" / "fuyingw" / "MELP_Encoder"
    repo.mkdir(parents=True)
    for name in ("model.safetensors", "config.json"):
        os.symlink(melp_weights_dir / name, repo / name)
    hf_hub(tmp_path / "hub")
    _same_as_disk(load_melp(), one_record, disk_output)


def test_missing_remote_file(s3, tmp_cache):
    with pytest.raises(WeightsError, match="no such file"):
        load_melp(s3.url("nowhere"))


# --------------------------------------------------------------------------- wrong files


def test_ecgfm_ked_checkpoint_is_refused(ked_weights_file, tmp_cache):
    with pytest.raises(WeightsError, match=r"not a safetensors file but a ZIP archive .*ECGFM-KED") as info:
        load_melp(str(ked_weights_file))
    assert str(ked_weights_file) in str(info.value)


def test_random_file_is_refused(tmp_path, tmp_cache):
    path = tmp_path / "model.safetensors"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(WeightsError, match=r"model.safetensors: not a readable safetensors file") as info:
        load_melp(str(path))
    assert "truncated or corrupt" in str(info.value)


@pytest.mark.parametrize("keep", [100, 50_000_000])
def test_truncated_file_is_refused(keep, melp_weights_dir, tmp_path, tmp_cache):
    """Cut inside the JSON header, and inside the tensor data."""
    path = tmp_path / "model.safetensors"
    with open(melp_weights_dir / "model.safetensors", "rb") as src:
        path.write_bytes(src.read(keep))
    with pytest.raises(WeightsError, match=rf"{path}: not a readable safetensors file \({keep} bytes; truncated"):
        load_melp(str(path))


def test_missing_unexpected_and_misshaped_keys_are_listed(checkpoint, tmp_path, tmp_cache):
    state = dict(checkpoint)
    del state["ecg_encoder.proj_contrast"]
    del state[BB + "encoder.layers.7.fc1.bias"]
    state["ecg_encoder.something_new"] = torch.zeros(3)
    state[BB + "post_extract_proj.weight"] = torch.zeros(768, 128, dtype=torch.bfloat16)
    path = tmp_path / "model.safetensors"
    save_file(state, path)
    with pytest.raises(WeightsError) as info:
        load_melp(str(path))
    msg = str(info.value)
    assert f"{path}: not a MELP ECG checkpoint in the released fuyingw/MELP_Encoder layout" in msg
    assert "2 missing keys: ecg_encoder.ecg_encoder.encoder.layers.7.fc1.bias, ecg_encoder.proj_contrast" in msg
    assert "1 unexpected keys: ecg_encoder.something_new" in msg
    assert "ecg_encoder.ecg_encoder.post_extract_proj.weight [768, 128] (expected [768, 256])" in msg


def test_token_level_needs_the_caption_pooler(checkpoint, tmp_path, tmp_cache):
    state = {k: v for k, v in checkpoint.items() if "caption" not in k}
    path = tmp_path / "model.safetensors"
    save_file(state, path)
    load_encoder(path)  # fine without token-level output
    with pytest.raises(WeightsError, match=r"11 missing keys: ecg_encoder.attn_pool_caption"):
        load_encoder(path, token_level=True)


def test_legacy_weight_norm_names_and_other_query_counts(checkpoint, melp_weights_dir, tmp_path):
    """weight_g/weight_v (old torch.nn.utils.weight_norm) load like the parametrisation names;
    a 13-query checkpoint (MELPModel's code default) is read from the tensor shape."""
    pos = BB + "conv_pos.pos_conv.0."
    state = dict(checkpoint)
    state[pos + "weight_g"] = state.pop(pos + "parametrizations.weight.original0")
    state[pos + "weight_v"] = state.pop(pos + "parametrizations.weight.original1")
    state["ecg_encoder.attn_pool_contrast.query"] = state["ecg_encoder.attn_pool_contrast.query"][:13].clone()
    path = tmp_path / "model.safetensors"
    save_file(state, path)
    legacy = load_encoder(path)
    reference = load_encoder(melp_weights_dir / "model.safetensors")
    assert legacy.config.n_queries_contrast == 13
    torch.testing.assert_close(legacy.backbone.conv_pos.conv.weight, reference.backbone.conv_pos.conv.weight,
                               atol=0, rtol=0)


def test_non_finite_weights_are_refused(checkpoint, tmp_path):
    state = dict(checkpoint)
    bad = state[BB + "encoder.layers.2.fc2.weight"].clone()
    bad[0, 0] = float("nan")
    state[BB + "encoder.layers.2.fc2.weight"] = bad
    path = tmp_path / "model.safetensors"
    save_file(state, path)
    with pytest.raises(WeightsError, match=r"non-finite values \(NaN/inf\) in " + BB + "encoder.layers.2.fc2.weight"):
        load_encoder(path)


def test_bf16_upcast_is_exact_and_bf16_kept_on_request(checkpoint, melp_weights_dir):
    key = BB + "encoder.layers.0.fc1.weight"
    assert checkpoint[key].dtype == torch.bfloat16
    fp32 = load_encoder(melp_weights_dir / "model.safetensors")
    assert torch.equal(fp32.backbone.encoder.layers[0].fc1.weight, checkpoint[key].float())
    bf16 = load_encoder(melp_weights_dir / "model.safetensors", dtype=torch.bfloat16)
    assert torch.equal(bf16.backbone.encoder.layers[0].fc1.weight, checkpoint[key])
    assert bf16.backbone.conv_pos.conv.weight.dtype == torch.bfloat16  # folded in fp32, then rounded


def test_config_json_wrong_model_type(melp_weights_dir, tmp_path, tmp_cache):
    folder = tmp_path / "other"
    folder.mkdir()
    os.symlink(melp_weights_dir / "model.safetensors", folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(WeightsError, match=r"config.json: model_type 'bert' is not 'melp'"):
        load_melp(str(folder))


def test_bad_dtype_and_option_combinations(melp_weights_dir):
    with pytest.raises(ValueError, match="dtype"):
        load_encoder(melp_weights_dir / "model.safetensors", dtype=torch.float16)
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, not 'fp16'"):
        load_melp(str(melp_weights_dir), precision="fp16")
    with pytest.raises(ValueError, match="text_weights and text_model go together"):
        load_melp(str(melp_weights_dir), text_weights="x.safetensors")
