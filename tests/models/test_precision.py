"""One precision policy: ``precision="bf16"`` keeps fp32's answers on real ECGs (issue 9, item 3).

Inputs: the 8 real WFDB records of ``shared/conformance/e2e`` (``melp_inputs.npy``,
``ked_inputs.npy``), weights: the conformance stand-ins (session fixtures). CPU bf16 autocast
stands in for the GPU's (same bf16 rounding of the operands), and :class:`EmulatedTF32` for the
GPU's TF32 (the operands of every matmul and convolution rounded to a 10-bit mantissa, fp32
accumulation); ``bench/gpu_check.sh`` repeats the comparison on CUDA. Each test also shows the
measurement can fail: whole-model autocast, the policy we replaced, misses the same bounds.
"""
from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ecgembed.models import execution
from ecgembed.models.ecgfm_ked import load_ked
from ecgembed.models.ecgfm_ked import precision_tag as ked_precision_tag
from ecgembed.models.melp import load_melp
from ecgembed.models.melp import precision_tag as melp_precision_tag

MIN_COSINE = 0.9999       # issue 9: MELP embedding and probe, KED embedding, per record
MAX_SCORE_CHANGE = 0.01   # issue 9: largest KED zero-shot score change


def round_tf32(t):
    """fp32 -> the nearest value with TF32's 10-bit mantissa (round half to even), still fp32."""
    if not isinstance(t, torch.Tensor) or t.dtype != torch.float32:
        return t
    i = t.contiguous().view(torch.int32)
    return ((i + 0x0FFF + ((i >> 13) & 1)) & ~0x1FFF).view(torch.float32)


class EmulatedTF32(TorchFunctionMode):
    """CPU stand-in for CUDA's TF32: the multiplied operands of matmuls and convolutions are
    rounded to TF32 (biases and accumulation stay fp32, as on the GPU)."""

    FIRST_TWO = {F.conv1d, F.linear, torch.matmul, torch.Tensor.__matmul__, torch.mm, torch.bmm,
                 F.scaled_dot_product_attention}
    AFTER_BIAS = {torch.addmm, torch.baddbmm}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.FIRST_TWO:
            args = (*map(round_tf32, args[:3 if func is F.scaled_dot_product_attention else 2]),
                    *args[3 if func is F.scaled_dot_product_attention else 2:])
        elif func in self.AFTER_BIAS:
            args = (args[0], *map(round_tf32, args[1:3]), *args[3:])
        return func(*args, **kwargs)


@contextlib.contextmanager
def emulated_tf32(device):
    with torch.autocast(device.type, enabled=False), EmulatedTF32():
        yield


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(((a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))).min())


@pytest.fixture(scope="module")
def e2e(shared_dir):
    folder = shared_dir / "conformance" / "e2e"
    texts = json.loads((shared_dir / "conformance" / "ecgfm-ked" / "class_texts.json").read_text())["class_texts"]
    return {"melp": np.load(folder / "melp_inputs.npy"), "ked": np.load(folder / "ked_inputs.npy"),
            "ked_features": np.load(shared_dir / "conformance" / "ecgfm-ked" / "expected" / "text_features.npy"),
            "n_texts": len(texts)}


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ECGEMBED_CACHE", str(tmp_path_factory.mktemp("precision_cache")))
        yield


# --------------------------------------------------------------------------- MELP
@pytest.fixture(scope="module")
def melp_pair(melp_weights_dir, module_cache):
    return load_melp(str(melp_weights_dir)), load_melp(str(melp_weights_dir), precision="bf16")


@pytest.fixture(scope="module")
def melp_classes():
    classes = np.random.default_rng(0).standard_normal((7, 256)).astype(np.float32)
    return classes / np.linalg.norm(classes, axis=1, keepdims=True)  # unit vectors, as a text tower gives


@pytest.fixture(scope="module")
def melp_fp32(melp_pair, e2e, melp_classes):
    return melp_pair[0].embed(e2e["melp"], [melp_classes])


def test_melp_bf16_policy_keeps_fp32_answers(melp_pair, melp_fp32, melp_classes, e2e, monkeypatch):
    monkeypatch.setattr("ecgembed.models.melp.embedder.tf32", emulated_tf32)  # the positional conv's TF32
    ref, got = melp_fp32, melp_pair[1].embed(e2e["melp"], [melp_classes])
    emb, probe = min_cosine(got["embedding"], ref["embedding"]), min_cosine(got["probe_embedding"], ref["probe_embedding"])
    score_change = float(np.abs(got["scores"][0] - ref["scores"][0]).max())
    print(f"\nMELP bf16 policy vs fp32 on the e2e records: min cosine embedding {emb:.7f}, "
          f"probe {probe:.7f}; largest cosine-score change {score_change:.2e}")
    assert emb >= MIN_COSINE and probe >= MIN_COSINE
    assert score_change <= MAX_SCORE_CHANGE
    assert got["embedding"].dtype == np.float32 and got["scores"][0].shape == (8, 7)


def test_melp_whole_model_autocast_would_not(melp_pair, melp_fp32, e2e):
    """The conv front is what matters: the same records under whole-model autocast (the old
    ``+bf16``) fall well below the bound, so the test above measures the policy, not luck."""
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        whole = melp_pair[0].encoder(torch.from_numpy(e2e["melp"]))["embedding"].float().numpy()
    cosine = min_cosine(whole, melp_fp32["embedding"])
    print(f"\nMELP whole-model autocast vs fp32: min cosine {cosine:.5f}")
    assert cosine < 0.999


def test_melp_precision_tags_and_versions(melp_pair):
    fp32, bf16 = melp_pair
    assert melp_precision_tag("fp32") == ""
    tag = melp_precision_tag("bf16")
    assert tag.startswith("+bf16") and tag != "+bf16"  # never confused with whole-model autocast rows
    assert fp32.output_version == fp32.model_version
    assert bf16.output_version == bf16.model_version + tag
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, not 'fp16'"):
        melp_precision_tag("fp16")


# --------------------------------------------------------------------------- ECGFM-KED
@pytest.fixture(scope="module")
def ked_pair(ked_weights_file, module_cache):
    return load_ked(str(ked_weights_file)), load_ked(str(ked_weights_file), precision="bf16")


@pytest.fixture(scope="module")
def ked_fp32(ked_pair, e2e):
    return ked_pair[0].embed(e2e["ked"], [e2e["ked_features"]])


def test_ked_bf16_policy_keeps_fp32_answers(ked_pair, ked_fp32, e2e, monkeypatch):
    """KED's fast policy is TF32 throughout (emulated here), within the same bounds; its rows
    carry ``+tf32`` so they are never mixed with IEEE fp32 rows."""
    monkeypatch.setattr("ecgembed.models.ecgfm_ked.model.tf32", emulated_tf32)
    ref, got = ked_fp32, ked_pair[1].embed(e2e["ked"], [e2e["ked_features"]])
    cosine = min_cosine(got["embedding"], ref["embedding"])
    score_change = float(np.abs(got["scores"][0] - ref["scores"][0]).max())
    print(f"\nECGFM-KED bf16 policy (TF32, emulated) vs fp32 on the e2e records ({e2e['n_texts']} classes): "
          f"min cosine {cosine:.7f}, largest score change {score_change:.2e}")
    assert cosine >= MIN_COSINE
    assert 1e-5 < score_change <= MAX_SCORE_CHANGE  # the emulation does round: scores move, within bounds
    assert ked_precision_tag("fp32") == "" and ked_precision_tag("bf16") == "+tf32"
    assert ked_pair[1].output_version == ked_pair[0].output_version + "+tf32"


def test_tf32_rounding_keeps_ten_mantissa_bits():
    x = torch.tensor([1.0 + 2**-10, 1.0 + 2**-11, 1.0 + 3 * 2**-11, -3.14159265, 0.0])
    np.testing.assert_array_equal(round_tf32(x).numpy(),
                                  np.float32([1.0 + 2**-10, 1.0, 1.0 + 2**-9, -3.140625, 0.0]))  # ties to even


def test_ked_trunk_in_bf16_would_not(ked_pair, ked_fp32, e2e):
    """Why KED's bf16 policy is fp32: with only the trunk under autocast the scores move past the
    bound although the embedding stays at cosine ~0.99999 (the TQN in bf16 adds more)."""
    fp32 = ked_pair[0]
    with torch.inference_mode():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            tokens = fp32.tokens(torch.from_numpy(e2e["ked"])).float()  # (8, 768, 32)
        scores = fp32.logits(tokens, torch.from_numpy(e2e["ked_features"])).softmax(-1)[..., 1]
    change = float(np.abs(scores.numpy() - ked_fp32["scores"][0]).max())
    cosine = min_cosine(tokens.mean(-1).numpy(), ked_fp32["embedding"])
    print(f"\nECGFM-KED trunk in bf16 vs fp32: min cosine {cosine:.7f}, largest score change {change:.4f}")
    assert cosine >= MIN_COSINE and change > MAX_SCORE_CHANGE


# --------------------------------------------------------------------------- transfers
def test_to_host_is_one_copy_split_back_into_shapes():
    parts = {"embedding": torch.arange(6.0).reshape(2, 3), "beat": torch.ones(2, 2, 2, dtype=torch.bfloat16),
             "scores": [torch.full((2, 1), 7.0), torch.zeros(2, 4)]}
    out = execution.to_host(parts)
    np.testing.assert_array_equal(out["embedding"], [[0, 1, 2], [3, 4, 5]])
    assert out["beat"].shape == (2, 2, 2) and out["beat"].dtype == np.float32
    assert [s.shape for s in out["scores"]] == [(2, 1), (2, 4)] and out["scores"][0][1, 0] == 7.0
    assert all(a.flags["C_CONTIGUOUS"] for a in (out["embedding"], out["beat"], *out["scores"]))
    empty = execution.to_host({"embedding": torch.zeros(0, 3), "scores": []})  # a batch with no ok rows
    assert empty["embedding"].shape == (0, 3) and empty["scores"] == []


def test_features_to_device_keeps_device_tensors():
    t = torch.ones(3, 4)
    assert execution.features_to_device([t], torch.device("cpu"), 4, "m")[0] is t  # no copy per batch
    with pytest.raises(ValueError, match=r"class_features\[0\] must be \(C, 4\)"):
        execution.features_to_device([np.ones((3, 5), np.float32)], torch.device("cpu"), 4, "m")
