"""Optional MELP text tower: tokenisation, causal BERT, proj_t and zero-shot cosine vs the original code.

The tower is the tiny stand-in of ``shared/conformance/melp`` (``text_tower_tiny.safetensors``,
written by make_weights.py). Its tokenizer/config folder is what a user would pass for a real
tower: ``vocab.txt`` (= ``vocab_tiny.txt``, 89 WordPieces; ``[BOS]`` is added as id 89 by the
loader) and the BERT ``config.json`` given in ``text_prompts.json``.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from ecgembed.errors import WeightsError
from ecgembed.models.melp import load_melp, load_text_tower, zero_shot_scores


@pytest.fixture(scope="module")
def melp_text(shared_dir):
    folder = shared_dir / "conformance" / "melp"
    prompts = json.loads((folder / "text_prompts.json").read_text())
    expected = {p.stem: np.load(p) for p in sorted((folder / "expected").glob("*.npy"))}
    return prompts, expected


@pytest.fixture(scope="module")
def tiny_text_model(melp_text, shared_dir, tmp_path_factory):
    """The tokenizer + BERT-config folder of the tiny tower (the layout of e.g. fuyingw/heart_bert)."""
    prompts, _ = melp_text
    folder = tmp_path_factory.mktemp("melp_tiny_text_model")
    shutil.copy(shared_dir / "conformance" / "melp" / "vocab_tiny.txt", folder / "vocab.txt")
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", **prompts["bert_config"]}))
    return folder


@pytest.fixture(scope="module")
def tower(melp_weights_dir, tiny_text_model, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ECGEMBED_CACHE", str(tmp_path_factory.mktemp("melp_text_cache")))
        tower, version = load_text_tower(str(melp_weights_dir / "text_tower_tiny.safetensors"), str(tiny_text_model))
    assert version == "89718a7c6748dd18a53fc71501d8f59d07219d1a9d3aee9655d18a8892cbfbe9"
    return tower


def test_tokenisation_matches_melp(tower, melp_text):
    prompts, expected = melp_text
    ids, mask = tower.tokenize(prompts["prompts"])
    assert ids.dtype == mask.dtype == torch.int64
    np.testing.assert_array_equal(ids.numpy(), expected["text_input_ids"])
    np.testing.assert_array_equal(mask.numpy(), expected["text_attention_mask"])
    for row_ids, row_mask, tokens, positions in zip(ids, mask, prompts["expected_tokens"],
                                                    prompts["expected_nonpad_positions"]):
        kept = row_mask.nonzero().flatten().tolist()
        assert kept == positions  # [BOS] .. [SEP], then [CLS] at 127 after the padding
        assert tower.tokenizer.convert_ids_to_tokens(row_ids[kept].tolist()) == tokens
    assert tower.tokenizer.convert_tokens_to_ids("[BOS]") == prompts["special_token_ids"]["[BOS]"]


def test_text_outputs_match_original_code(tower, melp_text):
    prompts, expected = melp_text
    with torch.inference_mode():
        out = tower(*tower.tokenize(prompts["prompts"]))
    torch.testing.assert_close(out["cls_hidden"], torch.from_numpy(expected["text_cls_hidden"]), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out["proj"], torch.from_numpy(expected["text_proj"]), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out["embedding"], torch.from_numpy(expected["text_emb"]), atol=1e-5, rtol=1e-4)


def test_lower_casing_and_causal_attention(tower):
    """Upper case gives the same ids; tokens after a position do not change it (causal BERT)."""
    a_ids, _ = tower.tokenize(["Atrial Fibrillation"])
    b_ids, _ = tower.tokenize(["atrial fibrillation"])
    assert torch.equal(a_ids, b_ids)
    short_ids, short_mask = tower.tokenize(["atrial fibrillation"])
    long_ids, long_mask = tower.tokenize(["atrial fibrillation with rapid ventricular response"])
    with torch.inference_mode():
        h_short = tower.bert(input_ids=short_ids, attention_mask=short_mask, use_cache=False).last_hidden_state
        h_long = tower.bert(input_ids=long_ids, attention_mask=long_mask, use_cache=False).last_hidden_state
    torch.testing.assert_close(h_short[:, :3], h_long[:, :3], atol=1e-5, rtol=1e-5)  # [BOS] atrial fibrillation


def test_zero_shot_logits_match_original_code(melp_weights_dir, tiny_text_model, melp_text, shared_dir, tmp_cache):
    prompts, expected = melp_text
    model = load_melp(str(melp_weights_dir), text_weights=str(melp_weights_dir / "text_tower_tiny.safetensors"),
                      text_model=str(tiny_text_model))
    inputs = np.load(shared_dir / "conformance" / "melp" / "inputs.npy")
    emb = torch.from_numpy(model.embed(inputs)["embedding"])
    logits = model.zero_shot(emb, model.encode_text(prompts["prompts"]))
    torch.testing.assert_close(logits, torch.from_numpy(expected["zeroshot_logits"]), atol=1e-5, rtol=1e-4)
    assert model.text_version == "89718a7c6748dd18a53fc71501d8f59d07219d1a9d3aee9655d18a8892cbfbe9"


def test_zero_shot_scores_are_plain_cosines():
    e = torch.nn.functional.normalize(torch.randn(2, 256), dim=-1)
    t = torch.nn.functional.normalize(torch.randn(3, 256), dim=-1)
    expected = torch.nn.functional.cosine_similarity(e[:, None], t[None], dim=-1)
    torch.testing.assert_close(zero_shot_scores(e, t), expected)


def test_text_tower_from_s3_and_http(s3, http_server, melp_weights_dir, tiny_text_model, tower, melp_text, tmp_cache):
    prompts, _ = melp_text
    s3.fs.put_file(str(melp_weights_dir / "text_tower_tiny.safetensors"), f"{s3.bucket}/text/tower.safetensors")
    s3.fs.invalidate_cache()
    base = http_server(tiny_text_model)  # config.json + vocab.txt; the other tokenizer files are absent
    remote, _ = load_text_tower(s3.url("text/tower.safetensors"), base)
    torch.testing.assert_close(remote.encode(prompts["prompts"]), tower.encode(prompts["prompts"]), atol=0, rtol=0)


def test_text_checkpoint_that_does_not_fit_the_tokenizer(melp_weights_dir, tiny_text_model, tmp_path, tmp_cache):
    state = load_file(melp_weights_dir / "text_tower_tiny.safetensors")
    words = "lm_model.bert.embeddings.word_embeddings.weight"
    state[words] = state[words][:89]  # a tokenizer without [BOS]
    del state["proj_t.2.bias"]
    state["lm_model.cls.predictions.bias"] = torch.zeros(89)  # a full checkpoint's MLM head: skipped
    path = tmp_path / "text.safetensors"
    save_file(state, path)
    with pytest.raises(WeightsError) as info:
        load_text_tower(str(path), str(tiny_text_model))
    msg = str(info.value)
    assert "not a MELP text tower (lm_model.bert.* + proj_t.*) matching the tokenizer/config" in msg
    assert "1 missing keys: proj_t.2.bias" in msg
    assert "lm_model.bert.embeddings.word_embeddings.weight [89, 768] (expected [90, 768])" in msg
    assert "unexpected" not in msg


def test_ecg_checkpoint_is_not_a_text_tower(melp_weights_dir, tiny_text_model, tmp_cache):
    with pytest.raises(WeightsError, match=r"missing keys: lm_model.bert.embeddings"):
        load_text_tower(str(melp_weights_dir / "model.safetensors"), str(tiny_text_model))


def test_text_model_folder_without_tokenizer(melp_weights_dir, tmp_path, tiny_text_model, tmp_cache):
    shutil.copy(tiny_text_model / "config.json", tmp_path / "config.json")
    with pytest.raises(WeightsError, match="no tokenizer.json or vocab.txt"):
        load_text_tower(str(melp_weights_dir / "text_tower_tiny.safetensors"), str(tmp_path))
