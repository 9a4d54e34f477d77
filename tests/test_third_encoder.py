"""Adding an encoder is one spec and one registration: nothing else in the job names a model.

A toy third encoder is registered next to MELP (as a new package would be, in
``ecgembed/models/registry.py``) and a real run writes its embeddings table, its scores, its
ledger rows and its ``*_current`` view, with no other change anywhere.
"""

from __future__ import annotations


import numpy as np

from ecgembed.config import RunConfig
from ecgembed.models import registry
from ecgembed.models.spec import ModelSpec, Vector
from ecgembed.pipeline import run
from ecgembed.tables.views import connect
from tests.ecgs import copy_cinc_records

DIM, SAMPLES = 8, 200


class ToyModel:
    """Embedding: the mean of each of the first 8 leads' input; score: a fixed function of it."""

    def to_device(self, class_features):
        return [np.asarray(f, np.float32) for f in class_features]

    def embed(self, x, class_features):
        embedding = x[:, :DIM, :].mean(axis=2).astype(np.float32)                       # (B, 8)
        return {"embedding": embedding,
                "scores": [1 / (1 + np.exp(-(embedding @ f.T))) for f in class_features]}  # (B, C)


class ToySpec(ModelSpec):
    name = "toy-ecg"
    title = "Toy ECG"
    vectors = (Vector("embedding", DIM, "mean of each of the first 8 leads of the input"),)
    input_shape = (12, SAMPLES)
    preproc_version = "toy-1"
    default_weights = "stand-in"
    batch_size = {"cpu": 4, "cuda": 4}
    gflop_per_record = 0.0

    def preprocess(self, signal, fs):
        out = np.zeros((12, SAMPLES), np.float32)
        n = min(SAMPLES, signal.shape[1])
        out[:, :n] = signal[:, :n]
        return out

    def version(self, weights, precision="fp32"):
        return f"toy-weights-1+{precision}"

    def scores(self, options):
        return True

    def scores_version(self, weights, options):
        return "toy-text-1"

    def class_features(self, label_sets, weights, options):
        return [np.linspace(-1, 1, len(ls.names) * DIM, dtype=np.float32).reshape(len(ls.names), DIM)
                for ls in label_sets]

    def load(self, weights, device, precision="fp32"):
        return ToyModel()


TOY = ToySpec()


def test_a_registered_third_encoder_gets_its_table_scores_ledger_and_views(ecg_dir, ray_local, tmp_path, monkeypatch):
    monkeypatch.setitem(registry.SPECS, TOY.name, TOY)            # the one registration line
    names = ("E07500", "E07501", "E07502")
    archive = copy_cinc_records(ecg_dir, tmp_path / "in", names)
    out = tmp_path / "out"
    manifest = run(RunConfig(inputs=[str(archive)], output=str(out), stand_in=True, labels=["chapman"],
                             models=("melp", "toy-ecg")))
    assert manifest["counts"]["toy_ecg_embeddings"] == 3 and manifest["models"]["toy-ecg"]["model_version"] == \
        "toy-weights-1+fp32"
    con = connect(str(out))
    rows = dict(con.execute("SELECT record_id, embedding FROM toy_ecg_current").fetchall())
    assert sorted(rows) == list(names)
    from ecgembed import read_record, standard_leads

    for name in names:                                            # what the toy model computes, read back
        leads = standard_leads(read_record(str(archive / f"{name}.hea")))
        expected = TOY.preprocess(leads.signal, leads.fs)[:DIM].mean(axis=1)
        np.testing.assert_allclose(rows[name], expected, rtol=1e-6, atol=1e-6)
    scores = con.execute("SELECT count(*), count(DISTINCT record_id) FROM scores_current WHERE model = 'toy-ecg' "
                         "AND label_set = 'chapman'").fetchall()
    assert scores == [(3 * 8, 3)]
    ledger = con.execute("SELECT count(*) FROM ledger WHERE model = 'toy-ecg' AND label_set IS NULL AND status = 'ok'")
    assert ledger.fetchall() == [(3,)]
    # the next night settles it like any model
    assert run(RunConfig(inputs=[str(archive)], output=str(out), stand_in=True, labels=["chapman"],
                         models=("melp", "toy-ecg")))["selected"] == 0
