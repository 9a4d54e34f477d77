"""Vendor-format benchmark: records/s per core, ours vs a reference reader, ratios from one run.

For each format, on the same files (local, OS-cached, one process, one thread):
  ours       bytes -> format decoder -> Record -> standard_leads -> melp_input + ked_input
  reference  the reference reader -> the same Record -> standard_leads -> the same two inputs
so the ratio is the decoder's. A second ratio times the decode alone.

References: GE MUSE and HL7 aECG: plain ``xml.etree`` + ``base64``/``str.split`` (what a user
writes); Philips: PyPI ``sierraecg`` 0.4.0 (``read_file``; a benchmark reference only, not a
dependency); DICOM: ``pydicom`` ``dcmread`` + ``waveform_array``; EDF: ``edfio`` on the path;
MATLAB: ``scipy.io.loadmat`` on the path; WFDB: ``wfdb.rdrecord``. SCP-ECG and BTL have no
Python reference reader: ours only.

    python bench/bench_formats.py [--seconds 3] [--rounds 5]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")      # one core: no BLAS/FFT threads
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import base64  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
import xml.etree.ElementTree as ElementTree  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ecgembed.leads import standard_leads  # noqa: E402
from ecgembed.preprocess import ked_input, melp_input  # noqa: E402
from ecgembed.sources import formats, read_record  # noqa: E402
from ecgembed.sources.formats.base import Limits  # noqa: E402
from ecgembed.sources.record import Record  # noqa: E402

warnings.filterwarnings("ignore")
ECG = Path(os.environ.get("ECGEMBED_SHARED", REPO.parent / "shared")) / "data" / "ecg"
LIMITS = Limits()


def record(leads, signal, fs, units) -> Record:
    return Record(record_id="r", uri="r", fs=fs, sig_name=list(leads), units=list(units), signal=signal,
                  metadata={}, comments=[], format="bench")


def inputs(rec: Record) -> None:
    leads = standard_leads(rec)
    melp_input(leads.signal, leads.fs)
    ked_input(leads.signal, leads.fs)


def ours_decode(path: Path) -> Record:
    data = path.read_bytes()
    decoded = formats.sniff(data[: formats.SNIFF_BYTES]).decode(path.name, {path.name: data}, LIMITS)
    return record(decoded.leads, decoded.signal, decoded.fs, decoded.units)


# --------------------------------------------------------------------------- reference readers
def ref_muse(path: Path) -> Record:
    root = ElementTree.fromstring(path.read_bytes())
    wave = next(w for w in root.iter("Waveform") if w.findtext("WaveformType") == "Rhythm")
    names, rows = [], []
    for lead in wave.iter("LeadData"):
        names.append(lead.findtext("LeadID"))
        counts = np.frombuffer(base64.b64decode(lead.findtext("WaveFormData")), "<i2")
        rows.append(counts * float(lead.findtext("LeadAmplitudeUnitsPerBit")) * 1e-3)
    return record(names, np.array(rows), float(wave.findtext("SampleBase")), ["mV"] * len(names))


def ref_aecg(path: Path) -> Record:
    ns = "{urn:hl7-org:v3}"
    root = ElementTree.fromstring(path.read_bytes())
    series = next(s for s in root.iter(f"{ns}series") if s.find(f"{ns}code").get("code") == "RHYTHM")
    names, rows, fs = [], [], None
    for seq in series.find(f"{ns}component/{ns}sequenceSet").iter(f"{ns}sequence"):
        code = seq.find(f"{ns}code").get("code")
        value = seq.find(f"{ns}value")
        if code.startswith("TIME_"):
            fs = 1.0 / float(value.find(f"{ns}increment").get("value"))
            continue
        digits = np.array(value.findtext(f"{ns}digits").split(), float)
        origin = float(value.find(f"{ns}origin").get("value"))
        rows.append((origin + float(value.find(f"{ns}scale").get("value")) * digits) * 1e-3)
        names.append(code)
    return record(names, np.array(rows), fs, ["mV"] * len(names))


def ref_philips(path: Path) -> Record:
    import sierraecg

    ecg = sierraecg.read_file(str(path))
    signal = np.array([lead.samples for lead in ecg.leads], np.float64) * 0.005
    return record([lead.label for lead in ecg.leads], signal, float(ecg.leads[0].sampling_freq), ["mV"] * len(ecg.leads))


def ref_dicom(path: Path) -> Record:
    import pydicom

    ds = pydicom.dcmread(path)
    index = next(i for i, g in enumerate(ds.WaveformSequence) if g.MultiplexGroupLabel == "RHYTHM")
    group = ds.WaveformSequence[index]
    signal = ds.waveform_array(index).T * 1e-3
    names = [ch.ChannelSourceSequence[0].CodeMeaning for ch in group.ChannelDefinitionSequence]
    return record(names, signal, float(group.SamplingFrequency), ["mV"] * len(names))


def ref_edf(path: Path) -> Record:
    import edfio

    edf = edfio.read_edf(path)
    signals = edf.signals
    return record([s.label for s in signals], np.array([s.data for s in signals]), signals[0].sampling_frequency,
                  [s.physical_dimension for s in signals])


def ref_matlab(path: Path) -> Record:
    import scipy.io

    data = scipy.io.loadmat(path, simplify_cells=True)["ECG"]["data"]
    return record(["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"], data, 500.0, ["mV"] * 12)


def ref_wfdb(path: Path) -> Record:
    import wfdb

    rec = wfdb.rdrecord(str(path.with_suffix("")))
    return record(rec.sig_name, rec.p_signal.T, rec.fs, rec.units)


def ours_wfdb(path: Path) -> Record:
    return read_record(str(path))


# --------------------------------------------------------------------------- constructed files
def constructed(folder: Path) -> dict[str, list[Path]]:
    """CPSC-2018-layout .mat and BTL XML files built from real records (no real sample exists)."""
    import scipy.io
    import wfdb

    mats, btls = [], []
    for i, hea in enumerate(sorted((ECG / "cpsc2018_cinc2020").glob("*.hea"))[:10]):
        rec = wfdb.rdrecord(str(hea.with_suffix("")))
        path = folder / f"cpsc{i}.mat"
        scipy.io.savemat(path, {"ECG": {"sex": "Male", "age": 60.0, "data": rec.p_signal.T}})
        mats.append(path)
        counts = np.rint(rec.p_signal.T[[0, 1, 6, 7, 8, 9, 10, 11]] * 1000).astype(int)
        channels = "".join(f'<Channel Name="{n}">{" ".join(map(str, row))}</Channel>'
                           for n, row in zip(("I", "II", "V1", "V2", "V3", "V4", "V5", "V6"), counts))
        channels += f'<Channel Name="STATUS">{" ".join(["0"] * counts.shape[1])}</Channel>'
        path = folder / f"btl{i}.xml"
        path.write_text(f'<?xml version="1.0"?><BTL_ECG><Signals SamplingFrequency="500" Resolution="1" '
                        f'Units="uV">{channels}</Signals></BTL_ECG>')
        btls.append(path)
    return {"matlab": mats, "btl": btls}


# --------------------------------------------------------------------------- timing
def one_pass(fn, paths: list[Path], with_inputs: bool) -> float:
    start = time.perf_counter()
    for p in paths:
        rec = fn(p)
        if with_inputs:
            inputs(rec)
    return time.perf_counter() - start


def best_rates(fns: list, paths: list[Path], seconds: float, rounds: int, with_inputs: bool) -> list[float]:
    """Records/s of each function: the best of ``rounds`` rounds, the functions interleaved round by
    round (so a noisy neighbour on a shared machine hurts both sides alike), after a warm-up pass."""
    best = [0.0] * len(fns)
    for fn in fns:
        one_pass(fn, paths, with_inputs)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            done, elapsed = 0, 0.0
            while elapsed < seconds / rounds:
                elapsed += one_pass(fn, paths, with_inputs)
                done += len(paths)
            best[i] = max(best[i], done / elapsed)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement (default 3)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per measurement; the best counts (default 5)")
    args = parser.parse_args()
    files = {
        "muse": sorted(ECG.glob("ge-muse_*/*.xml")),
        "philips": sorted((ECG / "philips-sierra").glob("*")),
        "aecg": sorted((ECG / "hl7-aecg").glob("*.xml")),
        "dicom": sorted(ECG.glob("*/*.dcm")),
        "scp": sorted(ECG.glob("*/*.scp")),
        "edf": sorted(ECG.glob("*/*.edf")),
        "wfdb": sorted((ECG / "cpsc2018_cinc2020").glob("*.hea"))[:20],
    }
    refs = {"muse": ref_muse, "philips": ref_philips, "aecg": ref_aecg, "dicom": ref_dicom, "edf": ref_edf,
            "matlab": ref_matlab, "wfdb": ref_wfdb}
    with tempfile.TemporaryDirectory() as tmp:
        files.update(constructed(Path(tmp)))
        print(f"records/s on one core (numpy {np.__version__}); 'full' = read + standard leads + MELP and "
              "ECGFM-KED inputs")
        print(f"{'format':8} {'files':>5} {'ours full':>10} {'ref full':>9} {'ratio':>6} "
              f"{'ours decode':>12} {'ref decode':>11} {'ratio':>6}")
        for name, paths in files.items():
            fns = [ours_wfdb if name == "wfdb" else ours_decode] + ([refs[name]] if name in refs else [])
            full = best_rates(fns, paths, args.seconds, args.rounds, True) + [None]
            decode = best_rates(fns, paths, args.seconds, args.rounds, False) + [None]
            row = [full[0], full[1], decode[0], decode[1]]
            cells = [f"{v:10.1f}" if v else f"{'n/a':>10}" for v in row]
            full = f"{row[0] / row[1]:6.2f}" if row[1] else f"{'-':>6}"
            dec = f"{row[2] / row[3]:6.2f}" if row[3] else f"{'-':>6}"
            print(f"{name:8} {len(paths):5d} {cells[0]} {cells[1]:>9} {full} {cells[2]:>12} {cells[3]:>11} {dec}")


if __name__ == "__main__":
    main()
