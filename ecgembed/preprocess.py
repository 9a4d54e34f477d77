"""Turn 12 standard leads into exactly the input each model expects, plus quality flags.

Both functions take the (12, N) signal in :data:`ecgembed.leads.MODEL_ORDER` (mV) and its
sampling rate, and work in float64 before casting to float32, as the reference code does.

**MELP** (``melp_input``, 12 x 5000, 500 Hz, 10 s): non-finite samples -> 0; a record not at
500 Hz is resampled to 500 Hz with a polyphase filter (``scipy.signal.resample_poly``, the
ratio reduced to integers of at most :data:`MAX_POLY_FACTOR`, see :func:`resample_ratio`; the
original code only ever saw 500 Hz, so this is our choice);
the first 5000 samples are kept, a shorter record is zero-padded at the end; then one
min-max over the whole 12 x 5000 array: ``(x - min) / (max - min + 1e-8)``. The global scaling
keeps the ratios between leads and makes the input independent of the amplitude unit.

**ECGFM-KED** (``ked_input``, 12 x 1000, 100 Hz, 10 s, mV, no normalisation): non-finite
samples -> 0; the WHOLE record is FFT-resampled (``scipy.signal.resample``'s method) to
``floor(N * 100 / fs)`` samples, as the original ``int(N / 5)``; the first 1000 samples are
kept, a shorter result is zero-padded centred (``start = (1000 - n) // 2``).

Each version string below changes whenever the numbers would: it hashes the parameters, and
the leading counter is bumped when the code changes.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from fractions import Fraction

import numpy as np
import scipy.fft
import scipy.signal

from ecgembed.errors import ECGError
from ecgembed.leads import MODEL_ORDER

MELP_FS, MELP_SAMPLES = 500, 5000
KED_FS, KED_SAMPLES = 100, 1000
MINMAX_EPS = 1e-8
# Rates preprocessing accepts (the reader's limits are narrower: 50-20,000 Hz by default), and the
# largest polyphase up/down factor (a filter of ~20x that many taps; version 1 had no bound).
MIN_FS, MAX_FS = 1.0, 100_000.0
MAX_POLY_FACTOR = 20_000

# Thresholds of the quality flags (documented in docs/preprocessing.md).
FLAT_PTP_MV = 0.02            # a lead whose peak-to-peak is below 20 µV carries no signal
SUSPECT_AMPLITUDE_MV = 20.0   # |x| above this hints at a wrong gain or unit
# The median over leads of the peak-to-peak amplitude is 0.5-3.7 mV on every real record of the
# sample set; a 5x gain error (GE MUSE -> WFDB conversion) gives 5.4 mV while its max |x| stays
# at 8.4 mV, under SUSPECT_AMPLITUDE_MV. Outside this range the gain or unit is likely wrong.
PLAUSIBLE_MEDIAN_PTP_MV = (0.05, 5.0)


def _version(counter: int, params: dict) -> str:
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]
    return f"{counter}+{digest}"


MELP_PREPROC_VERSION = "melp-" + _version(1, {
    "fs": MELP_FS, "samples": MELP_SAMPLES, "resample": "resample_poly", "crop": "first", "pad": "end-zeros",
    "nonfinite": 0, "norm": "global-minmax", "eps": MINMAX_EPS, "leads": MODEL_ORDER, "math": "float64"})
KED_PREPROC_VERSION = "ked-" + _version(1, {
    "fs": KED_FS, "samples": KED_SAMPLES, "resample": "fft-whole-record-floor", "crop": "first",
    "pad": "centred-zeros", "nonfinite": 0, "norm": None, "units": "mV", "leads": MODEL_ORDER, "math": "float64"})


def _finite(signal: np.ndarray) -> np.ndarray:
    x = np.asarray(signal, dtype=np.float64)
    if not np.isfinite(x).all():
        x = np.where(np.isfinite(x), x, 0.0)
    return x


def _check(signal: np.ndarray, uri: str = "") -> None:
    if signal.ndim != 2 or signal.shape[0] != 12:   # a caller's bug, not a property of the record
        raise ValueError(f"expected the 12 standard leads as a (12, N) array, got shape {signal.shape}")
    if signal.shape[1] == 0:
        raise ECGError(uri, "empty_signal", "the signal has no samples")


def _check_fs(fs: float, uri: str) -> float:
    if not (isinstance(fs, (int, float, np.floating, np.integer)) and math.isfinite(fs) and MIN_FS <= fs <= MAX_FS):
        raise ECGError(uri, "bad_sampling_rate",
                       f"cannot resample from {fs!r} Hz (supported: {MIN_FS:g}-{MAX_FS:g} Hz)")
    return float(fs)


def resample_ratio(fs: float, target_fs: int) -> Fraction:
    """``target_fs / fs`` as the integer up/down factors of the polyphase filter.

    The rate is read as ``Fraction(fs).limit_denominator(10_000)`` (version 1, unchanged). When
    that makes a factor larger than :data:`MAX_POLY_FACTOR` (e.g. 499.9999 Hz -> 5,000,000/4,999,999,
    a 10^8-tap filter), the ratio itself is approximated with factors within the bound (for
    499.9999 Hz: 1/1, a 2e-7 relative rate error), so the cost stays proportional to the record.
    Every integer rate from 1 to 20,000 Hz, and every rate already handled in version 1 without
    such a factor, gets exactly the version-1 factors, hence bit-identical outputs.
    """
    ratio = Fraction(target_fs) / Fraction(fs).limit_denominator(10_000)
    if max(ratio.numerator, ratio.denominator) <= MAX_POLY_FACTOR:
        return ratio
    exact = Fraction(target_fs) / Fraction(fs)
    bound = min(MAX_POLY_FACTOR, int(MAX_POLY_FACTOR / exact)) if exact > 1 else MAX_POLY_FACTOR
    return exact.limit_denominator(max(bound, 1))


def resample_to(x: np.ndarray, fs: float, target_fs: int, uri: str = "") -> np.ndarray:
    """Polyphase resampling of (12, N) float64 from ``fs`` to ``target_fs`` (identity if equal)."""
    if fs == target_fs:
        return x
    ratio = resample_ratio(_check_fs(fs, uri), target_fs)
    if ratio == 1:
        return x
    return scipy.signal.resample_poly(x, ratio.numerator, ratio.denominator, axis=1)


def melp_input(signal: np.ndarray, fs: float, uri: str = "") -> np.ndarray:
    """MELP's model input: float32 (12, 5000), globally min-max scaled to [0, 1].

    ``uri`` names the record in the :class:`ECGError` raised for an unusable rate or length.
    """
    _check(signal, uri)
    fs = _check_fs(fs, uri)
    x = _finite(signal)
    if fs != MELP_FS:
        # only the first 10 s are used: resample a little more than that, not a 30-min Holter
        keep = int(np.ceil((MELP_SAMPLES + 64) * fs / MELP_FS))
        x = resample_to(x[:, :keep], fs, MELP_FS, uri)
    out = np.zeros((12, MELP_SAMPLES), np.float64)
    n = min(MELP_SAMPLES, x.shape[1])
    out[:, :n] = x[:, :n]
    low, high = out.min(), out.max()
    return ((out - low) / (high - low + MINMAX_EPS)).astype(np.float32)


def fft_resample(x: np.ndarray, num: int) -> np.ndarray:
    """``scipy.signal.resample(x, num, axis=-1)`` for real input, the same operations in the same
    order (so the same bits) without its generic-array overhead; a test checks the equality."""
    n = x.shape[-1]
    m = min(num, n)
    spectrum = scipy.fft.rfft(x, axis=-1)[..., : m // 2 + 1]
    if m % 2 == 0 and num != n:   # the unpaired bin at m // 2
        spectrum[..., m // 2] *= 2 if num < n else 0.5
    return scipy.fft.irfft(spectrum / (n / num), n=num, axis=-1, overwrite_x=True)


def ked_resampled_length(n_samples: int, fs: float) -> int:
    """``floor(N * 100 / fs)``, exactly (the original's integer division)."""
    return int(Fraction(n_samples * KED_FS) / Fraction(fs))


def ked_input(signal: np.ndarray, fs: float, uri: str = "") -> np.ndarray:
    """ECGFM-KED's model input: float32 (12, 1000) at 100 Hz, in mV, not normalised."""
    _check(signal, uri)
    fs = _check_fs(fs, uri)
    x = _finite(signal)
    if fs != KED_FS:
        n = ked_resampled_length(x.shape[1], fs)
        if n == 0:
            raise ECGError(uri, "empty_signal", f"{x.shape[1]} samples at {fs:g} Hz is shorter than one sample at "
                                                f"{KED_FS} Hz")
        x = fft_resample(x, n)
    n = x.shape[1]
    if n >= KED_SAMPLES:
        return x[:, :KED_SAMPLES].astype(np.float32)
    out = np.zeros((12, KED_SAMPLES), np.float32)
    start = (KED_SAMPLES - n) // 2
    out[:, start : start + n] = x
    return out


@dataclass(frozen=True)
class QualityFlags:
    """Per-record facts worth keeping next to an embedding (columns of the output tables)."""

    fs: float                 # original sampling rate, Hz
    n_samples: int            # original length, samples
    duration_s: float
    n_nonfinite: int          # non-finite samples in the 12 leads (set to 0 before the models)
    flat_leads: tuple[str, ...]   # leads whose peak-to-peak is below FLAT_PTP_MV
    max_abs_mv: float         # largest finite |sample| over the 12 leads
    median_ptp_mv: float      # median over the 12 leads of the peak-to-peak amplitude
    amplitude_suspect: bool   # max_abs_mv > 20 mV or median_ptp_mv outside 0.05-5 mV: gain/unit likely wrong
    derived_leads: tuple[str, ...]

    def as_dict(self) -> dict:
        return asdict(self)


def quality_flags(signal: np.ndarray, fs: float, derived: tuple[str, ...] = (), uri: str = "") -> QualityFlags:
    """Quality flags of the (12, N) standard-lead signal in mV."""
    _check(signal, uri)
    fs = _check_fs(fs, uri)
    finite = np.isfinite(signal)
    clean = np.where(finite, signal, np.nan)
    with np.errstate(all="ignore"):
        ptp = np.nanmax(clean, axis=1) - np.nanmin(clean, axis=1)
        max_abs = float(np.nanmax(np.abs(clean))) if finite.any() else float("nan")
    flat = tuple(lead for lead, p in zip(MODEL_ORDER, ptp) if not p >= FLAT_PTP_MV)
    median_ptp = float(np.nanmedian(ptp)) if finite.any() else float("nan")
    low, high = PLAUSIBLE_MEDIAN_PTP_MV
    suspect = max_abs > SUSPECT_AMPLITUDE_MV or not low <= median_ptp <= high
    return QualityFlags(
        fs=float(fs), n_samples=int(signal.shape[1]), duration_s=float(signal.shape[1] / fs),
        n_nonfinite=int((~finite).sum()), flat_leads=flat, max_abs_mv=max_abs, median_ptp_mv=median_ptp,
        amplitude_suspect=bool(suspect), derived_leads=tuple(derived),
    )
