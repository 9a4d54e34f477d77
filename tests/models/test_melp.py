"""MELP encoder: conformance with the original code, the raw-file path, the inference API.

Precision (bf16) is tested in ``test_precision.py``.

The stand-in checkpoint comes from ``shared/conformance/melp/make_weights.py`` (session fixture
``melp_weights_dir``); ``shared/conformance/melp/expected/`` holds what the original MELP +
fairseq-signals code computed from it. One forward over the 4 conformance inputs is shared by
every conformance test in this module.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ecgembed.models.melp import MELPConfig, MELPEncoder, load_encoder, load_melp
from ecgembed.models.melp.load import WEIGHT_NORM, checkpoint_key, fold_weight_norm

ATOL = RTOL = 1e-4  # un-normalised ECG outputs (README: 2-thread vs 1-thread differences reach 2e-5)
ATOL_NORM = 1e-5  # L2-normalised vectors


@pytest.fixture(scope="module")
def melp_conformance(shared_dir):
    folder = shared_dir / "conformance" / "melp"
    inputs = np.load(folder / "inputs.npy")
    expected = {p.stem: np.load(p) for p in sorted((folder / "expected").glob("*.npy"))}
    return inputs, expected


@pytest.fixture(scope="module")
def encoder_token_level(melp_weights_dir):
    """The stand-in checkpoint loaded straight from disk, with the caption pooler."""
    return load_encoder(melp_weights_dir / "model.safetensors", token_level=True)


@pytest.fixture(scope="module")
def reference_outputs(encoder_token_level, melp_conformance):
    """Every intermediate of one fp32 forward over the 4 conformance inputs."""
    inputs, _ = melp_conformance
    x = torch.from_numpy(inputs)
    enc = encoder_token_level
    with torch.inference_mode():
        conv = enc.backbone.conv_features(x)
        tokens = enc.backbone(x)
        heads = enc.heads(tokens)
    return {"conv": conv, "tokens": tokens, **heads}


# --------------------------------------------------------------------------- conformance

# expected file -> (our output, absolute tolerance)
CONFORMANCE = {
    "ecg_conv_features": (lambda o: o["conv"], ATOL),
    "ecg_backbone_tokens": (lambda o: o["tokens"], ATOL),
    "ecg_backbone_mean": (lambda o: o["tokens"].mean(dim=1), ATOL),
    "ecg_beat": (lambda o: o["beat"], ATOL),
    "ecg_rhythm_proj": (lambda o: o["rhythm"], ATOL),
    "ecg_zeroshot_emb": (lambda o: o["embedding"], ATOL_NORM),
    "ecg_linear_probe_emb": (lambda o: o["probe_embedding"], ATOL),
    "ecg_token": (lambda o: o["token"], ATOL),
}


@pytest.mark.parametrize("name", sorted(CONFORMANCE))
def test_matches_original_code(name, reference_outputs, melp_conformance):
    _, expected = melp_conformance
    ours, atol = CONFORMANCE[name]
    got = ours(reference_outputs)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, torch.from_numpy(expected[name]), atol=atol, rtol=RTOL)


def test_every_ecg_reference_array_is_checked(melp_conformance):
    _, expected = melp_conformance
    ecg_names = {n for n in expected if n.startswith("ecg_")}
    assert ecg_names == set(CONFORMANCE)  # a new reference file must get a test


def test_checkpoint_facts(encoder_token_level):
    cfg = encoder_token_level.config
    assert cfg.n_queries_contrast == 14  # from the tensor shape, not the code defaults (13 / 12)
    assert cfg.n_queries_caption == 128 and cfg.n_tokens == 312
    # spec §e counts checkpoint values: ours + the 128 weight-norm gains folded into the conv weight
    n = sum(p.numel() for p in encoder_token_level.parameters())
    assert n + 128 == 65_084_032  # inference total with the caption pooler
    with torch.device("meta"):
        no_caption = MELPEncoder(cfg)
    assert sum(p.numel() for p in no_caption.parameters()) + 128 == 62_618_752  # without the caption pooler
    # spec §f: 42.8 GFLOP per record, 41.6 without the caption pooler
    assert encoder_token_level.estimate_flops_per_record() == pytest.approx(42.8e9, rel=2e-3)
    assert no_caption.estimate_flops_per_record() == pytest.approx(41.6e9, rel=2e-3)


def test_weight_norm_fold_equals_torch_parametrization():
    """The fold done once at load equals torch's weight_norm(dim=2) recomputed every call."""
    g = torch.rand(1, 1, 8) + 0.5
    v = torch.randn(6, 3, 8)
    conv = torch.nn.Conv1d(6, 6, 8, groups=2)
    conv = torch.nn.utils.parametrizations.weight_norm(conv, dim=2)
    with torch.no_grad():
        conv.parametrizations.weight.original0.copy_(g)
        conv.parametrizations.weight.original1.copy_(v)
    # equal up to the summation order of the norm (1 ulp)
    torch.testing.assert_close(fold_weight_norm(g, v), conv.weight, atol=0, rtol=1e-6)


def test_key_table_names():
    assert checkpoint_key("backbone.feature_extractor.conv_layers.3.conv.weight") == \
        "ecg_encoder.ecg_encoder.feature_extractor.conv_layers.3.0.weight"
    assert checkpoint_key("backbone.feature_extractor.conv_layers.0.norm.bias") == \
        "ecg_encoder.ecg_encoder.feature_extractor.conv_layers.0.2.bias"
    assert checkpoint_key("backbone.encoder.layers.7.fc2.weight") == \
        "ecg_encoder.ecg_encoder.encoder.layers.7.fc2.weight"
    assert checkpoint_key("attn_pool_contrast.attn.in_proj_bias") == "ecg_encoder.attn_pool_contrast.attn.in_proj_bias"
    assert checkpoint_key("proj_contrast") == "ecg_encoder.proj_contrast"
    assert set(WEIGHT_NORM) == {"backbone.conv_pos.conv.weight"}


def test_config_rejects_inconsistent_numbers():
    with pytest.raises(ValueError, match="n_heads"):
        MELPConfig(n_heads=7)


# --------------------------------------------------------------------------- inference API


@pytest.fixture(scope="module")
def melp_model(melp_weights_dir, tmp_path_factory):
    """``load_melp`` defaults (fp32, no beat/token output), with a private weights cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ECGEMBED_CACHE", str(tmp_path_factory.mktemp("melp_cache")))
        yield load_melp(str(melp_weights_dir))


def test_default_outputs_and_provenance(melp_model, reference_outputs, melp_conformance):
    inputs, expected = melp_conformance
    assert melp_model.model_version == "337f3011c15e0e3215433dff706b4b214d1477eba52c16004f112fddac2ca88f"
    assert not hasattr(melp_model.encoder, "attn_pool_caption")  # caption pooler not even built
    out = melp_model.embed(inputs[:2])
    assert set(out) == {"embedding", "probe_embedding"}
    assert all(v.dtype == np.float32 for v in out.values())
    assert out["embedding"].shape == (2, 256) and out["probe_embedding"].shape == (2, 256)
    np.testing.assert_allclose(np.linalg.norm(out["embedding"], axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(out["embedding"], expected["ecg_zeroshot_emb"][:2], atol=ATOL_NORM, rtol=RTOL)
    np.testing.assert_allclose(out["probe_embedding"], expected["ecg_linear_probe_emb"][:2], atol=ATOL, rtol=RTOL)
    # skipping the caption pooler changes nothing else (up to thread scheduling)
    np.testing.assert_allclose(out["embedding"], reference_outputs["embedding"][:2].numpy(), atol=1e-6)


def test_beat_and_token_outputs_on_request(melp_weights_dir, melp_conformance, tmp_cache):
    inputs, expected = melp_conformance
    model = load_melp(str(melp_weights_dir), beat_level=True, token_level=True)
    with torch.inference_mode():
        out = model(torch.from_numpy(inputs[:1]))
    assert set(out) == {"embedding", "probe_embedding", "beat", "token"}
    assert out["beat"].shape == (1, 14, 256) and out["token"].shape == (1, 128, 768)
    torch.testing.assert_close(out["beat"], torch.from_numpy(expected["ecg_beat"][:1]), atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(out["token"], torch.from_numpy(expected["ecg_token"][:1]), atol=ATOL, rtol=RTOL)


def test_bad_input_shape_is_refused(melp_model):
    with pytest.raises(ValueError, match=r"\(B, 12, 5000\)"):
        melp_model(torch.zeros(1, 12, 2500))
    with pytest.raises(ValueError, match=r"\(B, 12, 5000\)"):
        melp_model.embed(np.zeros((12, 5000), np.float32))


def test_no_text_tower_means_no_zero_shot(melp_model):
    with pytest.raises(RuntimeError, match="no text tower"):
        melp_model.encode_text(["normal ecg"])


# --------------------------------------------------------------------------- raw WFDB files -> embedding


@pytest.fixture(scope="module")
def e2e(shared_dir):
    folder = shared_dir / "conformance" / "e2e"
    records = json.loads((folder / "records.json").read_text())["records"]
    return records, np.load(folder / "melp_inputs.npy"), dict(np.load(folder / "expected.npz"))


def test_e2e_reference_inputs_give_reference_embeddings(melp_model, e2e):
    """Model half of the end-to-end check: the contract's inputs -> the original code's outputs."""
    _, inputs, expected = e2e
    out = melp_model.embed(inputs)
    np.testing.assert_allclose(out["embedding"], expected["melp_global_norm"], atol=ATOL_NORM, rtol=RTOL)
    np.testing.assert_allclose(out["probe_embedding"], expected["melp_probe"], atol=ATOL, rtol=RTOL)


def test_e2e_raw_wfdb_records(melp_model, e2e, shared_dir):
    """Whole path: WFDB files -> read_record -> standard_leads -> melp_input -> MELP."""
    import ecgembed
    from ecgembed.models.melp import melp_input

    records, ref_inputs, expected = e2e
    batch = []
    for rec in records:
        record = ecgembed.read_record(str(shared_dir / rec["path"]))
        leads = ecgembed.standard_leads(record)
        batch.append(melp_input(leads.signal, leads.fs))
    batch = np.stack(batch)
    np.testing.assert_allclose(batch, ref_inputs, atol=1e-6, rtol=0)  # README: MELP inputs within 1e-6
    out = melp_model.embed(batch)
    np.testing.assert_allclose(out["embedding"], expected["melp_global_norm"], atol=ATOL_NORM, rtol=RTOL)
    np.testing.assert_allclose(out["probe_embedding"], expected["melp_probe"], atol=ATOL, rtol=RTOL)
