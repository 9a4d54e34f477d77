"""Helpers that write small WFDB records for tests (real files, written by the ``wfdb`` package),
or copy real ones from ``shared/data/ecg``."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import wfdb

STANDARD = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]


def synthetic_ecg(n_leads: int = 12, n_samples: int = 5000, fs: float = 500, seed: int = 0) -> np.ndarray:
    """(n_samples, n_leads) mV: a 72 bpm spike train plus noise, different per lead."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_samples) / fs
    beat = np.exp(-(((t % (60 / 72)) - 0.3) ** 2) / (2 * 0.01**2))
    gains = rng.uniform(0.3, 1.5, n_leads)
    return (beat[:, None] * gains[None, :] + 0.02 * rng.standard_normal((n_samples, n_leads))).round(3)


def write_wfdb(folder: Path, name: str, signal: np.ndarray | None = None, *, fs: float = 500,
               sig_name: list[str] | None = None, units: list[str] | None = None, fmt: str = "16",
               gain: float = 1000.0, comments: list[str] | None = None) -> Path:
    """Write ``name.hea`` + ``name.dat`` into ``folder``; returns the header path."""
    folder.mkdir(parents=True, exist_ok=True)
    signal = synthetic_ecg(fs=fs) if signal is None else signal
    n = signal.shape[1]
    sig_name = sig_name or STANDARD[:n]
    wfdb.wrsamp(name, fs=fs, units=units or ["mV"] * n, sig_name=sig_name, p_signal=signal,
                fmt=[fmt] * n, adc_gain=[gain] * n, baseline=[0] * n, comments=comments or [],
                write_dir=str(folder))
    return folder / f"{name}.hea"


def copy_cinc_records(ecg_dir: Path, folder: Path, names: tuple[str, ...] = ("E07500", "E07501", "E07502")) -> Path:
    """Copy real CinC 2021 records (``.hea`` + ``.mat``) from ``shared/data/ecg`` into a new ``folder``."""
    folder.mkdir(parents=True)
    for name in names:
        for ext in (".hea", ".mat"):
            shutil.copy(ecg_dir / "cinc2021_torch-ecg" / f"{name}{ext}", folder / f"{name}{ext}")
    return folder
