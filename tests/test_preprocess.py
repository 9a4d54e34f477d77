"""Per-model inputs: the e2e conformance inputs from raw files, and the rules for other rates/lengths."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ecgembed import read_record, standard_leads
from ecgembed.preprocess import (
    KED_PREPROC_VERSION,
    MELP_PREPROC_VERSION,
    ked_input,
    ked_resampled_length,
    melp_input,
    quality_flags,
)


@pytest.fixture(scope="module")
def e2e(shared_dir):
    folder = shared_dir / "conformance" / "e2e"
    records = json.loads((folder / "records.json").read_text())["records"]
    return shared_dir, records, np.load(folder / "melp_inputs.npy"), np.load(folder / "ked_inputs.npy")


def test_conformance_inputs_from_raw_files(e2e):
    shared, records, melp_expected, ked_expected = e2e
    assert len(records) == 8
    for i, entry in enumerate(records):
        leads = standard_leads(read_record(shared / entry["path"]))
        assert list(leads.source_index) == entry["lead_permutation"]
        melp, ked = melp_input(leads.signal, leads.fs), ked_input(leads.signal, leads.fs)
        assert melp.dtype == ked.dtype == np.float32
        assert melp.shape == (12, 5000) and ked.shape == (12, 1000)
        np.testing.assert_allclose(melp, melp_expected[i], rtol=0, atol=1e-6)
        np.testing.assert_allclose(ked, ked_expected[i], rtol=0, atol=1e-5)
        assert ked_resampled_length(leads.n_samples, leads.fs) == entry["ked_resampled_length"]


def test_ked_length_is_floored_not_rounded():
    assert ked_resampled_length(5974, 500) == 1194      # CPSC A0004: round would give 1195
    assert ked_resampled_length(22498, 500) == 4499
    assert ked_resampled_length(38400, 1000) == 3840
    assert ked_resampled_length(4630, 257) == 1801       # 1801.556


def test_ked_short_record_is_centred_with_zero_padding():
    x = np.ones((12, 4000))  # 8 s at 500 Hz -> 800 samples at 100 Hz, placed at 100..899
    out = ked_input(x, 500)
    assert np.all(out[:, :100] == 0) and np.all(out[:, 900:] == 0)
    np.testing.assert_allclose(out[:, 100:900], 1.0, atol=1e-6)


def test_ked_at_100_hz_is_not_resampled(ecg_dir):
    leads = standard_leads(read_record(ecg_dir / "ptbxl_records100" / "00001_lr"))
    np.testing.assert_array_equal(ked_input(leads.signal, leads.fs), leads.signal.astype(np.float32))


def test_melp_from_other_rates(ecg_dir):
    """100 Hz (PTB-XL lr) and 1000 Hz (PTB) records become 5000 samples of 500 Hz."""
    for path in ("ptbxl_records100/00001_lr", "ptbdb_wfdb-python/s0010_re"):
        leads = standard_leads(read_record(ecg_dir / path))
        x = melp_input(leads.signal, leads.fs)
        assert x.shape == (12, 5000) and x.min() == 0.0 and x.max() == pytest.approx(1.0)
    # a 500 Hz sine resampled from 1000 Hz keeps its shape
    t = np.arange(20000) / 1000
    sine = np.tile(np.sin(2 * np.pi * 1.2 * t), (12, 1))
    out = melp_input(sine, 1000)
    ref = melp_input(np.tile(np.sin(2 * np.pi * 1.2 * np.arange(5000) / 500), (12, 1)), 500)
    np.testing.assert_allclose(out[:, 50:-50], ref[:, 50:-50], atol=2e-3)


def test_melp_short_record_is_padded_at_the_end_before_scaling():
    x = np.full((12, 2500), 2.0)
    x[0, 0] = 4.0
    out = melp_input(x, 500)
    assert np.all(out[:, 2500:] == 0.0)          # the padded zeros are the minimum
    assert out[0, 0] == pytest.approx(1.0) and out[1, 0] == pytest.approx(0.5)


def test_constant_record_becomes_zeros():
    np.testing.assert_array_equal(melp_input(np.full((12, 5000), 0.7), 500), np.zeros((12, 5000), np.float32))


def test_input_shape_is_checked():
    with pytest.raises(ValueError, match=r"\(12, N\)"):
        melp_input(np.zeros((8, 5000)), 500)


def test_quality_flags(ecg_dir):
    muse = standard_leads(read_record(ecg_dir / "ge-muse_EGM" / "muse-sinus"))
    flags = quality_flags(muse.signal, muse.fs, muse.derived)
    assert flags.amplitude_suspect and flags.median_ptp_mv > 5   # header gain 5x too small
    assert flags.max_abs_mv < 20                                   # which max |x| alone would miss
    assert quality_flags(muse.signal * 3, 500).max_abs_mv > 20 and quality_flags(muse.signal / 1000, 500).amplitude_suspect
    good = standard_leads(read_record(ecg_dir / "cinc2021_torch-ecg" / "E07500"))
    flags = quality_flags(good.signal, good.fs)
    assert not flags.amplitude_suspect and flags.flat_leads == () and flags.n_nonfinite == 0
    assert (flags.fs, flags.n_samples, flags.duration_s) == (500.0, 5000, 10.0)
    flat = good.signal.copy()
    flat[[7, 9]] = 0.001
    assert quality_flags(flat, 500).flat_leads == ("V2", "V4")


def test_preproc_versions_name_the_model_and_are_stable():
    assert MELP_PREPROC_VERSION.startswith("melp-1+") and KED_PREPROC_VERSION.startswith("ked-1+")
    assert MELP_PREPROC_VERSION == "melp-1+f2b2f0af"   # changing a parameter must change this string


@pytest.mark.parametrize("n, num", [(5000, 1000), (5974, 1194), (22498, 4499), (1000, 5000), (999, 4000), (2001, 1000)])
def test_fft_resample_is_scipy_resample_bit_for_bit(n, num):
    import scipy.signal

    from ecgembed.preprocess import fft_resample

    x = np.random.default_rng(n).standard_normal((12, n))
    np.testing.assert_array_equal(fft_resample(x, num), scipy.signal.resample(x, num, axis=1))
