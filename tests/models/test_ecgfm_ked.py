"""ECGFM-KED: our plain-torch model reproduces the ORIGINAL code's numbers on the reference checkpoint.

Golden arrays: ``shared/conformance/ecgfm-ked/expected/`` (tensor level) and
``shared/conformance/e2e/expected.npz`` (raw WFDB files -> embedding and scores), produced by
control-spiderman/ECGFM-KED's own modules. Tolerance: atol = rtol = 1e-4 (CPU fp32); integer
arrays exact. Regenerating them is a separate, deliberate step in ``shared/``, never a test.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ecgembed.labels import LabelClass, LabelSet
from ecgembed.models.ecgfm_ked import DEFAULT_TEXT_MODEL, KEDConfig, class_features, load_ked, load_ked_text
from ecgembed.models.ecgfm_ked import text as ked_text

TOL = dict(atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory):
    """A private cache for this module's module-scoped fixtures (no writes to ~/.cache)."""
    with pytest.MonkeyPatch.context() as mp:
        cache = tmp_path_factory.mktemp("ked_cache")
        mp.setenv("ECGEMBED_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="module")
def ref(shared_dir):
    folder = shared_dir / "conformance" / "ecgfm-ked"
    expected = {p.stem: np.load(p) for p in (folder / "expected").glob("*.npy")}
    texts = json.loads((folder / "class_texts.json").read_text())["class_texts"]
    return {"dir": folder, "inputs": np.load(folder / "inputs.npy"), "texts": texts,
            "tiny_bert": str(folder / "tiny_bert"), **expected}


@pytest.fixture(scope="module")
def model(ked_weights_file, module_cache):
    return load_ked(str(ked_weights_file))


@pytest.fixture(scope="module")
def text(ked_weights_file, ref, module_cache):
    return load_ked_text(str(ked_weights_file), ref["tiny_bert"])


def close(actual, expected):
    actual = actual.detach().cpu().numpy() if isinstance(actual, torch.Tensor) else actual
    np.testing.assert_allclose(actual, expected, **TOL)


# --------------------------------------------------------------------------- ECG side
def test_encoder_tokens_and_embedding(model, ref):
    with torch.inference_mode():
        tokens = model.tokens(torch.from_numpy(ref["inputs"]))
    assert tokens.shape == (4, 768, KEDConfig().n_tokens) == (4, 768, 32)
    close(tokens, ref["ecg_tokens"])
    close(tokens.mean(-1), ref["ecg_embedding"])


def test_encoder_stages_record0(model, ref):
    """Each top-level child of the trunk, for locating a divergence (record 0 alone)."""
    stages = np.load(ref["dir"] / "expected" / "debug_ecg_stages_record0.npz")
    names = ["stem0", "stem1", "stem2", "maxpool", "stage1", "stage2", "stage3", "stage4"]
    x = torch.from_numpy(ref["inputs"][:1])
    with torch.inference_mode():
        for name, child in zip(names, model.encoder):
            x = child(x)
            close(x[0], stages[name])


def test_query_network_features_logits_scores(model, ref):
    tokens = torch.from_numpy(ref["ecg_tokens"])
    feats = torch.from_numpy(ref["text_features"])
    with torch.inference_mode():
        close(model.tqn.features(tokens.transpose(1, 2), feats), ref["tqn_features"])
        logits = model.logits(tokens, feats)
    close(logits, ref["zs_logits"])
    close(logits.softmax(-1)[..., 1], ref["zs_scores"])


def test_model_version_is_file_sha256(model, ked_weights_file):
    import hashlib

    assert model.model_version == hashlib.sha256(ked_weights_file.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- text side
def test_tokenizer_ids_and_mask_exact(text, ref):
    enc = text.tokenize(ref["texts"])
    np.testing.assert_array_equal(enc["input_ids"].numpy(), ref["text_input_ids"])
    np.testing.assert_array_equal(enc["attention_mask"].numpy(), ref["text_attention_mask"])
    # lower-casing is on; prompt 5 is truncated to 256 pieces ending with [SEP]
    assert enc["input_ids"][4, -1].item() == text.tokenizer.sep_token_id


def test_text_pooler_and_features(text, ref):
    enc = text.tokenize(ref["texts"])
    with torch.inference_mode():
        close(text.encoder.pooled(**enc), ref["text_pooler"])
    feats = text.encode(ref["texts"])
    assert feats.dtype == np.float32 and feats.shape == (5, 768)
    close(feats, ref["text_features"])


def test_text_model_from_s3_folder_and_default_hub_id(ked_weights_file, ref, s3, hf_hub, tmp_path, tmp_cache):
    """Tokenizer + config come from any folder URI, or a model id resolved through the Hub."""
    folder = Path(ref["tiny_bert"])
    text = load_ked_text(str(ked_weights_file), s3.put_dir(folder, "text-models/tiny_bert"))
    close(text.encode(ref["texts"]), ref["text_features"])

    repo = tmp_path / "hub" / "emilyalsentzer" / "Bio_ClinicalBERT"   # the default id, served locally
    repo.mkdir(parents=True)
    for name in ("config.json", "vocab.txt"):
        shutil.copy(folder / name, repo / name)
    hf_hub(tmp_path / "hub")
    text = load_ked_text(str(ked_weights_file))
    assert text.files.config.uri == f"{DEFAULT_TEXT_MODEL}/config.json"   # the pinned revision
    close(text.encode(ref["texts"]), ref["text_features"])


# --------------------------------------------------------------------------- public API
def test_forward_and_embed_end_to_end(model, text, ref):
    feats = text.encode(ref["texts"])
    out = model.embed(ref["inputs"], [feats])
    assert set(out) == {"embedding", "scores"}
    assert out["embedding"].dtype == np.float32 and out["scores"][0].shape == (4, 5)
    close(out["embedding"], ref["ecg_embedding"])
    close(out["scores"][0], ref["zs_scores"])
    # scores are left out without class features; torch in, torch out for forward()
    assert set(model.embed(ref["inputs"])) == {"embedding"}
    with torch.inference_mode():
        fwd = model(torch.from_numpy(ref["inputs"]), [torch.from_numpy(feats)])
    close(fwd["scores"][0], ref["zs_scores"])


def test_several_label_sets_share_one_trunk_pass(model, ref):
    """embed scores each label set as if alone (one trunk pass for all of them)."""
    feats = ref["text_features"]
    sets = [feats, feats[:3], feats[[4, 1]]]
    got = model.embed(ref["inputs"], sets)
    close(got["embedding"], ref["ecg_embedding"])
    assert [s.shape for s in got["scores"]] == [(4, 5), (4, 3), (4, 2)]
    for scores, f in zip(got["scores"], sets):
        np.testing.assert_allclose(scores, model.embed(ref["inputs"], [f])["scores"][0], atol=1e-6)
    assert model.embed(ref["inputs"], [])["scores"] == []
    # class features already on the device (uploaded once by an actor) give the same numbers
    on_device = model.to_device(sets)
    assert all(isinstance(t, torch.Tensor) and t.device == model.device for t in on_device)
    for a, b in zip(model.embed(ref["inputs"], on_device)["scores"], got["scores"]):
        np.testing.assert_array_equal(a, b)


def test_scores_follow_class_order_but_depend_on_the_set(model, ref):
    feats = ref["text_features"]
    x = ref["inputs"][:2]
    base = model.embed(x, [feats])["scores"][0]
    perm = [3, 0, 4, 1, 2]
    np.testing.assert_allclose(model.embed(x, [feats[perm]])["scores"][0], base[:, perm], atol=1e-5)
    subset = model.embed(x, [feats[:3]])["scores"][0]
    assert np.abs(subset - base[:, :3]).max() > 1e-4  # queries attend to each other


def test_bad_input_shapes_are_refused(model):
    with pytest.raises(ValueError, match=r"\(B, 12, 1000\)"):
        model.embed(np.zeros((1, 12, 5000), np.float32))   # MELP's 500 Hz input by mistake
    with pytest.raises(ValueError, match="class_features"):
        model.embed(np.zeros((1, 12, 1000), np.float32), [np.zeros((3, 256), np.float32)])
    with pytest.raises(TypeError, match="one \\(C, 768\\) array per label set"):
        model.embed(np.zeros((1, 12, 1000), np.float32), np.zeros((3, 768), np.float32))  # not in a list


# --------------------------------------------------------------------------- class-feature cache
def test_class_features_cached_in_memory_and_on_disk(ked_weights_file, ref, tmp_cache, monkeypatch):
    labels = LabelSet("conformance", tuple(LabelClass(f"c{i}", t) for i, t in enumerate(ref["texts"])))
    monkeypatch.setattr(ked_text, "_MEMORY", {})
    feats = class_features(labels, str(ked_weights_file), ref["tiny_bert"])
    close(feats, ref["text_features"])
    assert not feats.flags.writeable
    files = list((tmp_cache / "ecgfm_ked" / "class_features").glob("*.npz"))
    assert len(files) == 1

    def no_bert(*args, **kwargs):
        raise AssertionError("BERT must not be loaded again for a cached label set")

    monkeypatch.setattr(ked_text, "load_ked_text", no_bert)
    assert class_features(labels, str(ked_weights_file), ref["tiny_bert"]) is feats     # memory
    monkeypatch.setattr(ked_text, "_MEMORY", {})
    np.testing.assert_array_equal(class_features(labels, str(ked_weights_file), ref["tiny_bert"]), feats)  # disk
    # another class list is another cache entry (and needs the text model)
    other = LabelSet("other", labels.classes[:2])
    with pytest.raises(AssertionError, match="must not be loaded"):
        class_features(other, str(ked_weights_file), ref["tiny_bert"])


# --------------------------------------------------------------------------- raw files -> outputs
def test_e2e_raw_wfdb_to_embedding_and_scores(model, text, ref, shared_dir):
    import ecgembed
    from ecgembed.preprocess import ked_input

    e2e = shared_dir / "conformance" / "e2e"
    records = json.loads((e2e / "records.json").read_text())["records"]
    expected = np.load(e2e / "expected.npz")
    x = []
    for rec in records:
        leads = ecgembed.standard_leads(ecgembed.read_record(str(shared_dir / rec["path"])))
        x.append(ked_input(leads.signal, leads.fs))
    x = np.stack(x)
    np.testing.assert_allclose(x, np.load(e2e / "ked_inputs.npy"), atol=1e-5, rtol=0)
    out = model.embed(x, [text.encode(ref["texts"])])
    close(out["embedding"], expected["ked_embedding"])
    close(out["scores"][0], expected["ked_scores"])
