"""Reader benchmark: ratios measured in one run, on the same records, on one core.

(a) ``read_record`` + leads + both model inputs  vs  ``wfdb.rdrecord`` + the same preprocessing
    written the obvious way with wfdb/numpy/scipy (local files, one process, one thread);
(b) records/s fetched from a SeaweedFS S3 server on loopback with many requests in flight
    (``fetch_many`` over the ``RecordRef``s of ``discover(...).refs``) vs one record at a time
    (``fetch_raw``); every read is bounded (ranged GETs of the bytes a header implies).

    python bench/bench_reader.py [--copies 3] [--repeats 3] [--no-s3]

Two record sets, both from the real WFDB records of ../shared/data/ecg:
- "MIMIC layout": the 25 CinC-2021 records (12 x 5000, 500 Hz) rewritten as format-16 ``.dat``
  (MIMIC-IV-ECG's layout), ``--mimic-copies`` times (10 x 25 = 250 records by default);
- "mixed": all 69 sample records as they are (format 16/212 ``.dat``, ``16+24`` ``.mat``, 100 to
  1000 Hz, up to 38 400 samples and 15 signals), ``--copies`` times (207 by default).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")      # one core: no BLAS/FFT threads
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import scipy.signal  # noqa: E402
import wfdb  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ecgembed import read_record, standard_leads  # noqa: E402
from ecgembed.preprocess import ked_input, melp_input  # noqa: E402
from ecgembed.sources.discover import discover  # noqa: E402
from ecgembed.sources.reader import fetch_many, fetch_raw  # noqa: E402

ORDER = ("i", "ii", "iii", "avr", "avf", "avl", "v1", "v2", "v3", "v4", "v5", "v6")
warnings.filterwarnings("ignore")  # wfdb + pandas 3 warn on every read


def ours(header: str) -> None:
    leads = standard_leads(read_record(header))
    melp_input(leads.signal, leads.fs)
    ked_input(leads.signal, leads.fs)


def obvious(header: str) -> None:
    """What a careful user would write with wfdb and scipy."""
    rec = wfdb.rdrecord(header[:-4], physical=True)
    names = [n.lower() for n in rec.sig_name]
    x = np.nan_to_num(rec.p_signal.T[[names.index(lead) for lead in ORDER]], nan=0.0)
    fs, n = rec.fs, x.shape[1]
    m = x if fs == 500 else scipy.signal.resample_poly(x, 500, int(fs), axis=1)
    m = np.pad(m[:, :5000], ((0, 0), (0, max(0, 5000 - m.shape[1]))))
    (m - m.min()) / (m.max() - m.min() + 1e-8)
    k = x if fs == 100 else scipy.signal.resample(x, int(n * 100 // fs), axis=1)
    if k.shape[1] >= 1000:
        k[:, :1000].astype(np.float32)
    else:
        out = np.zeros((12, 1000), np.float32)
        out[:, (1000 - k.shape[1]) // 2:][:, : k.shape[1]] = k


def decode_only_ours(header: str) -> None:
    read_record(header)


def decode_only_wfdb(header: str) -> None:
    wfdb.rdrecord(header[:-4], physical=True)


def best_rate(fn, headers: list[str], repeats: int) -> float:
    for h in headers[:5]:  # warm-up: imports, caches
        fn(h)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for h in headers:
            fn(h)
        best = min(best, time.perf_counter() - start)
    return len(headers) / best


def make_mimic_like(shared: Path, copies: int, dest: Path) -> list[str]:
    sources = sorted((shared / "data" / "ecg" / "cinc2021_torch-ecg").glob("*.hea"))
    for c in range(copies):
        folder = dest / f"p{c:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        for hea in sources:
            rec = wfdb.rdrecord(str(hea)[:-4], physical=False)
            wfdb.wrsamp(hea.stem, fs=rec.fs, units=rec.units, sig_name=rec.sig_name, d_signal=rec.d_signal,
                        fmt=["16"] * rec.n_sig, adc_gain=rec.adc_gain, baseline=rec.baseline, write_dir=str(folder))
    return sorted(str(p) for p in dest.rglob("*.hea"))


def make_records(shared: Path, copies: int, dest: Path) -> list[str]:
    sources = sorted((shared / "data" / "ecg").rglob("*.hea"))
    for c in range(copies):
        for hea in sources:
            folder = dest / f"copy{c}" / hea.parent.name
            folder.mkdir(parents=True, exist_ok=True)
            for f in hea.parent.glob(hea.stem + ".*"):
                shutil.copy(f, folder / f.name)
    return sorted(str(p) for p in dest.rglob("*.hea"))


def bench_local(name: str, headers: list[str], repeats: int) -> None:
    print(f"(a) {name}: local files, {len(headers)} records, one process, one thread, best of {repeats}")
    rows = [("decode only", best_rate(decode_only_ours, headers, repeats), best_rate(decode_only_wfdb, headers, repeats)),
            ("decode + leads + MELP and KED inputs", best_rate(ours, headers, repeats), best_rate(obvious, headers, repeats))]
    print(f"    {'':40s} {'ecgembed rec/s':>15s} {'wfdb rec/s':>11s} {'ratio':>7s}")
    for name, a, b in rows:
        print(f"    {name:40s} {a:15.0f} {b:11.0f} {a / b:6.1f}x")


def bench_s3(root: Path, repeats: int) -> None:
    from tests.services import S3Server

    with tempfile.TemporaryDirectory() as tmp:
        server = S3Server(Path(tmp))
        server.start()
        try:
            os.environ.update(server.env)
            prefix = server.put_dir(root, "bench")
            found = discover(prefix)
            refs = found.refs
            print(f"(b) S3 (SeaweedFS on loopback), {len(refs)} records (header + signal files each), best of {repeats}")
            print(f"    {found.summary()}")
            one = many = float("inf")
            fetch_many(refs[:5])
            for _ in range(repeats):
                start = time.perf_counter()
                for ref in refs:
                    fetch_raw(ref)
                one = min(one, time.perf_counter() - start)
                start = time.perf_counter()
                for i in range(0, len(refs), 64):
                    got = fetch_many(refs[i : i + 64])
                    assert not any(isinstance(g, Exception) for g in got)
                many = min(many, time.perf_counter() - start)
            print(f"    one record at a time:            {len(refs) / one:8.0f} rec/s")
            print(f"    batches of 64, all in flight:    {len(refs) / many:8.0f} rec/s   ratio {one / many:.1f}x")
        finally:
            server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=os.environ.get("ECGEMBED_SHARED", str(REPO.parent / "shared")))
    ap.add_argument("--copies", type=int, default=3, help="copies of the mixed sample set")
    ap.add_argument("--mimic-copies", type=int, default=10, help="copies of the 25 MIMIC-layout records")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-s3", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as mimic, tempfile.TemporaryDirectory() as mixed:
        bench_local("MIMIC layout", make_mimic_like(Path(args.shared), args.mimic_copies, Path(mimic)), args.repeats)
        bench_local("mixed", make_records(Path(args.shared), args.copies, Path(mixed)), args.repeats)
        if not args.no_s3:
            bench_s3(Path(mimic), args.repeats)


if __name__ == "__main__":
    main()
