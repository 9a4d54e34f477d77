"""The data plane at scale, on CPU: every step of the job except the encoders, measured in one run.

    python bench/bench_scale.py [--records 100000] [--sample 2000] [--small]

The encoders are replaced, inside this benchmark only, by a zero-cost stand-in (each vector and
score is its input's mean; :class:`ZeroCostMelp`, :class:`ZeroCostKed`), so what is left is the
data plane: discovery, the ledger, ``prepare`` (fetch + decode + leads + both model inputs), Ray's
object store, the model stages' own bookkeeping, writing the Delta files and the commit.

Records: ``--records`` copies of the PTB-XL 100 Hz record bundled with ecgembed
(``samples/ptbxl/00001_lr``: 12 x 1000 samples, format 16, 24 KB), each renamed into its own
MIMIC-IV-ECG folder (``files/p1xxx/p<subject>/s<study>/<study>.{hea,dat}``) with a
``record_list.csv`` beside ``files/``, uploaded to a SeaweedFS S3 server on 127.0.0.1 started
here (ports chosen explicitly, ``tests/services.S3Server``); the output goes to the same store.
A smaller set of MIMIC-layout 500 Hz records (the 25 CinC-2021 12 x 5000 records rewritten as
format-16 ``.dat``, 120 KB each, as in MIMIC-IV-ECG) is uploaded too, for one in-process
``prepare`` figure at MIMIC's size.

What is printed, all from this one run:

- the machine (cores, CPU, memory) and its load average at the start, during and at the end:
  the machine may be shared, and wall-clock figures of a loaded machine are slower;
- the upload rate (not part of any figure);
- per step: records, wall seconds, CPU seconds of this process (all its threads), records/s of
  wall time and records per CPU-second (the per-core rate). Steps run in this process
  (discovery, the in-process ``prepare`` and write samples, the ledger) have CPU seconds; the
  pipeline's figures are its run manifest's busy seconds (wall time inside Ray tasks, summed
  over tasks: per-core rates that include the waits on the store and on a loaded CPU);
- the no-op nightly rerun's wall seconds against the full run's (goal <= 5 %);
- bytes per record through Ray's object store (the Arrow blocks each operator outputs, measured
  on the in-process sample), read from S3, and written to each output table.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")      # per-core figures: no BLAS/FFT threads
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import csv  # noqa: E402
import io  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
for _path in (str(REPO), str(BENCH)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from ecgembed.models.ecgfm_ked.job import KedSpec  # noqa: E402
from ecgembed.models.melp.job import MelpSpec  # noqa: E402
from ecgembed.models.spec import STAND_IN  # noqa: E402

PTBXL = REPO / "ecgembed" / "samples" / "ptbxl" / "00001_lr"
UPLOAD_IN_FLIGHT = 256
UPLOAD_CHUNK = 4096


# --------------------------------------------------------------------------- the zero-cost encoders
class ZeroCostModel:
    """What a model actor holds, at (almost) no cost: each vector and score is its input's mean
    plus seeded noise (a few microseconds per record).

    The noise makes the written vectors as incompressible as real float32 embeddings, so the
    output bytes per record are those of a real run (constant vectors would compress to nothing).
    The model stage around it (column conversion, error bookkeeping, Arrow columns out) is the
    job's own code; only the forward pass is gone.
    """

    def __init__(self, spec):
        self.dims = {v.name: v.dim for v in spec.vectors}
        self.rng = np.random.default_rng(20251129)

    def to_device(self, class_features: list) -> list:
        return [np.asarray(f, np.float32) for f in class_features]

    def _fill(self, mean: np.ndarray, width: int) -> np.ndarray:
        return mean + self.rng.standard_normal((len(mean), width), dtype=np.float32)      # (B, width)

    def embed(self, x: np.ndarray, class_features: list) -> dict:
        mean = x.mean(axis=(1, 2), dtype=np.float32)[:, None]                               # (B, 1)
        out = {name: self._fill(mean, dim) for name, dim in self.dims.items()}              # (B, D)
        out["scores"] = [self._fill(mean, len(f)) for f in class_features]                  # (B, C_i)
        return out


class _ZeroCost:
    """Mixin: the real spec (same name, input, preprocess, columns) with a zero-cost ``load``."""

    def version(self, weights: str, precision: str = "fp32") -> str:
        return f"{STAND_IN}:bench-zero-cost:{self.name}:{precision}"   # never passes for real rows

    def load(self, weights: str, device: str, precision: str = "fp32") -> ZeroCostModel:
        return ZeroCostModel(self)


class ZeroCostMelp(_ZeroCost, MelpSpec):
    pass


class ZeroCostKed(_ZeroCost, KedSpec):
    pass


class zero_cost_encoders:
    """Swap the registered specs for the zero-cost ones in this process, and back.

    The driver resolves models through ``registry.SPECS``; each model actor receives its spec
    inside its plan, pickled by reference to this module (``bench_scale``), which the workers
    import through ``PYTHONPATH``. ``prepare`` in the workers uses the registered (real) specs:
    same names, same inputs and preprocessing, so the CPU stage is the job's.
    """

    def __enter__(self):
        from ecgembed.models import registry

        self.saved = dict(registry.SPECS)
        for spec in (ZeroCostMelp(), ZeroCostKed()):
            registry.SPECS[spec.name] = spec
        return self

    def __exit__(self, *exc):
        from ecgembed.models import registry

        registry.SPECS.clear()
        registry.SPECS.update(self.saved)


# --------------------------------------------------------------------------- records
def renamed_header(text: str, stem: str, new: str) -> bytes:
    """A WFDB header of record ``stem`` renamed ``new`` (its record line and its signal file names)."""
    lines = [new + line[len(stem):] if line.startswith(stem) else line for line in text.splitlines()]
    return ("\n".join(lines) + "\n").encode()


def mimic_path(i: int) -> tuple[int, int, str]:
    """Subject, study and record path of record ``i`` in MIMIC-IV-ECG's layout (two studies per subject)."""
    subject, study = 10_000_000 + (i // 2) * 179, 40_000_000 + i
    return subject, study, f"files/p{str(subject)[:4]}/p{subject}/s{study}/{study}"


def archive_objects(n: int, stem: str, header: str, signal: bytes, ext: str, first: int = 0) -> dict[str, bytes]:
    """``n`` copies of one record, each in its own MIMIC-layout folder, keyed by relative path."""
    out = {}
    for i in range(first, first + n):
        _, study, path = mimic_path(i)
        out[f"{path}.hea"] = renamed_header(header, stem, str(study))
        out[f"{path}{ext}"] = signal
    return out


def record_list(n: int, first: int = 0) -> bytes:
    """A ``record_list.csv`` as MIMIC-IV-ECG ships it (subject_id, study_id, file_name, ecg_time, path)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["subject_id", "study_id", "file_name", "ecg_time", "path"])
    for i in range(first, first + n):
        subject, study, path = mimic_path(i)
        writer.writerow([subject, study, study, "2180-01-01 00:00:00", path])
    return buffer.getvalue().encode()


def upload(server, prefix: str, objects: dict[str, bytes]) -> tuple[int, int, float]:
    """Put every object with UPLOAD_IN_FLIGHT requests in flight; (objects, bytes, seconds)."""
    fs = server.fs
    items = list(objects.items())
    start = time.perf_counter()
    for i in range(0, len(items), UPLOAD_CHUNK):
        chunk = {f"{server.bucket}/{prefix}/{rel}": data for rel, data in items[i : i + UPLOAD_CHUNK]}
        fs.pipe(chunk, batch_size=UPLOAD_IN_FLIGHT)
    fs.invalidate_cache()
    return len(items), sum(len(v) for v in objects.values()), time.perf_counter() - start


def mimic_500hz_source(shared: Path, dest: Path) -> list[tuple[str, str, bytes]]:
    """The 25 CinC-2021 records (12 x 5000 at 500 Hz) as format-16 ``.dat``: (stem, header, signal)."""
    from bench_reader import make_mimic_like

    headers = make_mimic_like(shared, 1, dest)
    if not headers:
        raise SystemExit(f"no CinC-2021 records under {shared}/data/ecg/cinc2021_torch-ecg: give --shared "
                         "(or ECGEMBED_SHARED)")
    return [(Path(h).stem, Path(h).read_text(), Path(h).with_suffix(".dat").read_bytes()) for h in headers]


# --------------------------------------------------------------------------- measuring
class LoadSampler:
    """The 1-minute load average, sampled every few seconds in a thread."""

    def __init__(self, every: float = 5.0):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(every,), daemon=True)

    def _loop(self, every: float) -> None:
        while not self._stop.wait(every):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class timed:
    """Wall and CPU seconds (this process, all threads) of a block."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "?") if Path("/proc/cpuinfo").exists() else "?"
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable), {cpu}, {mem:.0f} GiB RAM, "
            f"Python {platform.python_version()}")


class counted_fetch:
    """CPU seconds of ``prepare``'s fetch alone, in this process (the S3 client works on fsspec's IO
    thread, which ``time.process_time`` counts): wraps ``stages.fetch_with_retries`` for the block."""

    def __enter__(self):
        from ecgembed import stages

        self.cpu, self._real = 0.0, stages.fetch_with_retries

        def fetch(refs, limits):
            start = time.process_time()
            try:
                return self._real(refs, limits)
            finally:
                self.cpu += time.process_time() - start

        stages.fetch_with_retries = fetch
        return self

    def __exit__(self, *exc):
        from ecgembed import stages

        stages.fetch_with_retries = self._real


def in_process(refs, resolved, output: str, write: bool) -> dict:
    """``prepare`` -> both zero-cost model stages -> the sink's ``write``, in this process on ``refs``,
    in batches of the job's default ``records_per_task``; CPU and wall seconds, Arrow bytes per hop."""
    from ray.data.block import BlockAccessor

    from ecgembed import columns as C
    from ecgembed.config import RunConfig
    from ecgembed.plan import Capacity, Device, plan_models
    from ecgembed.stages import ModelStage, prepare
    from ecgembed.tables import schemas as S
    from ecgembed.tables.ledger import select_work
    from ecgembed.tables.sink import EcgTablesDatasink

    batch_size = RunConfig().records_per_task
    runs = resolved.runs
    work = select_work(S.LEDGER_SCHEMA.empty_table(), refs, runs)
    plans = plan_models(runs, Device("cpu", "bench", False), Capacity(0.0, None, False), gpus_per_actor=None,
                        max_actors=None, batch_sizes={})
    model_stages = [ModelStage(p, resolved.class_features[p.run.name]) for p in plans]
    tally: Counter = Counter()
    progress = SimpleNamespace(add=SimpleNamespace(remote=lambda **counts: tally.update(counts)))
    hops: Counter = Counter()
    blocks, prep_wall, prep_cpu, stage_wall, stage_cpu = [], 0.0, 0.0, 0.0, 0.0
    with counted_fetch() as fetch:
        for i in range(0, len(work), batch_size):
            table = C.manifest(work[i : i + batch_size], runs)
            hops["manifest"] += table.nbytes
            batch = {name: table[name].to_numpy(zero_copy_only=False) for name in table.column_names}
            with timed() as t:
                out = prepare(batch, tuple(r.spec for r in runs), progress=progress)
            prep_wall, prep_cpu = prep_wall + t.wall, prep_cpu + t.cpu
            failed = Counter(out[C.ERROR_TYPE][out[C.STATUS] == C.ERROR].tolist())
            if failed:
                raise RuntimeError(f"prepare failed on sample records: {dict(failed)}")
            block = BlockAccessor.batch_to_block(out)
            hops["prepare"] += block.nbytes
            for name in (C.model_input(r.spec) for r in runs):
                hops[f"prepare:{name}"] += block[name].nbytes
            with timed() as t:
                for stage, plan in zip(model_stages, plans):
                    block = stage(block)
                    hops[f"after {plan.run.name}"] += block.nbytes
            stage_wall, stage_cpu = stage_wall + t.wall, stage_cpu + t.cpu
            blocks.append(block)
    result = {"records": len(work), "prepare": SimpleNamespace(wall=prep_wall, cpu=prep_cpu),
              "stages": SimpleNamespace(wall=stage_wall, cpu=stage_cpu), "hops": hops, "fetch_cpu": fetch.cpu,
              "busy": {k.removeprefix("seconds_"): v for k, v in tally.items() if k.startswith("seconds_")}}
    if write:
        sink = EcgTablesDatasink(output, "bench-sample", tuple(runs), rows_per_file=len(work))
        with timed() as t:
            sink.write(blocks, SimpleNamespace(task_idx=0))
        result["write"] = t
    return result


# --------------------------------------------------------------------------- the run
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=100_000, help="records in the archive (default 100000)")
    ap.add_argument("--sample", type=int, default=2000, help="records of each in-process sample (default 2000)")
    ap.add_argument("--small", action="store_true", help="a quick check: 2000 records, samples of 200")
    ap.add_argument("--shared", default=os.environ.get("ECGEMBED_SHARED", str(REPO.parent / "shared")),
                    help="the shared data folder (its CinC-2021 records make the 500 Hz sample)")
    args = ap.parse_args()
    if args.small:
        args.records, args.sample = 2000, 200
    sample = min(args.sample, args.records)

    import bench_scale      # this file as a module: the model actors unpickle the zero-cost specs from it

    say = lambda line="": print(line, flush=True)  # noqa: E731
    load_start = os.getloadavg()
    say(f"machine: {machine()}")
    say(f"load average at start (1/5/15 min): {load_start[0]:.2f} / {load_start[1]:.2f} / {load_start[2]:.2f}")
    with tempfile.TemporaryDirectory(prefix="bscale-") as tmp, LoadSampler() as load, \
            bench_scale.zero_cost_encoders():
        figures = run_all(Path(tmp), args, sample, say)
    load_end = os.getloadavg()
    report(figures, args, sample, load_start, load, load_end, say)


def run_all(tmp: Path, args, sample: int, say) -> dict:
    import ray

    from ecgembed.config import RunConfig
    from ecgembed.labels import load_label_set
    from ecgembed.pipeline import resolve_models, run
    from ecgembed.sources.discover import discover
    from ecgembed.tables.ledger import read_ledger, select_work
    from tests.services import S3Server

    f: dict = {}
    server = S3Server(tmp / "s3")
    server.start()
    os.environ.update(server.env)
    try:
        header, signal = PTBXL.with_suffix(".hea").read_text(), PTBXL.with_suffix(".dat").read_bytes()
        objects = archive_objects(args.records, PTBXL.name, header, signal, ".dat")
        objects["record_list.csv"] = record_list(args.records)
        f["record_bytes"] = len(renamed_header(header, PTBXL.name, "40000000")) + len(signal)
        f["upload"] = upload(server, "archive", objects)
        del objects
        say(f"uploaded {f['upload'][0]:,} objects ({f['upload'][1] / 1e6:,.0f} MB) in {f['upload'][2]:.0f} s")
        mimic = mimic_500hz_source(Path(args.shared), tmp / "mimic500")
        m_objects: dict[str, bytes] = {}
        for i in range(sample):
            stem, m_header, m_signal = mimic[i % len(mimic)]
            m_objects.update(archive_objects(1, stem, m_header, m_signal, ".dat", first=i))
        f["mimic_record_bytes"] = sum(len(v) for v in m_objects.values()) / sample
        f["upload_500hz"] = upload(server, "mimic500", m_objects)
        del m_objects
        archive, csv_uri, output = server.url("archive"), server.url("archive/record_list.csv"), server.url("out")

        with timed() as t:
            listed = discover(archive)
        f["listing"] = (len(listed.refs), t)
        with timed() as t:
            manifest = discover(csv_uri)
        f["manifest_csv"] = (len(manifest.refs), t)
        if len(listed.refs) != args.records or len(manifest.refs) != args.records:
            raise RuntimeError(f"discovery found {len(listed.refs)} / {len(manifest.refs)} records, "
                               f"not {args.records}: {listed.summary()}")
        say(f"discovered {len(listed.refs):,} records by listing and by manifest CSV")

        config = dict(inputs=[archive], output=output, stand_in=True, device="cpu", progress_interval_s=60)
        label_sets = [load_label_set(name) for name in RunConfig().labels]
        resolved = resolve_models(RunConfig(**config).validate(), label_sets)
        step = max(1, len(listed.refs) // sample)
        f["sample"] = in_process(listed.refs[::step][:sample], resolved, server.url("scratch"), write=True)
        f["sample_500hz"] = in_process(discover(server.url("mimic500")).refs, resolved, "", write=False)
        say(f"in-process samples done ({sample} records each)")

        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 _temp_dir=str(tmp / "ray"),
                 runtime_env={"env_vars": {**server.env, "RAY_USAGE_STATS_ENABLED": "0",
                                           "PYTHONPATH": os.pathsep.join([str(REPO), str(BENCH)])}})
        try:
            progress = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
            for name in ("full", "no-op"):
                with timed() as t:
                    f[name] = run(RunConfig(**config), log_line=progress)
                f[name + "_wall"] = t.wall
                say(f"{name} run: {f[name]['selected']:,} of {f[name]['discovered']:,} records in {t.wall:.1f} s")
                if name == "full":
                    with timed() as t:
                        ledger = read_ledger(output)
                    f["ledger_read"] = (ledger.num_rows, t)
                    with timed() as t:
                        work = select_work(ledger, listed.refs, resolved.runs)
                    f["anti_join"] = (len(listed.refs), t, len(work))
        finally:
            ray.shutdown()
        fs = server.fs
        fs.invalidate_cache()
        f["tables"] = {table: fs.du(f"{server.bucket}/out/{table}") for table in f["full"]["counts"]}
    finally:
        server.stop()
    return f


# --------------------------------------------------------------------------- the table
def report(f: dict, args, sample: int, load_start, load, load_end, say) -> None:
    n = args.records
    full, noop = f["full"], f["no-op"]
    stats = full["stats"]
    busy = stats["busy_seconds"]
    commit_tables = full["commit"]
    commit_sum = sum(t["seconds"] for t in commit_tables.values())
    during = load.samples or [float("nan")]
    say()
    say(f"load average (1 min) during the run: min {min(during):.2f}, mean {sum(during) / len(during):.2f}, "
        f"max {max(during):.2f}; at the end (1/5/15 min): {load_end[0]:.2f} / {load_end[1]:.2f} / {load_end[2]:.2f}")
    objects, size, seconds = f["upload"]
    say(f"records: {n:,} copies of PTB-XL 00001_lr (100 Hz, 12 x 1000, format 16, {f['record_bytes']:,} B header + "
        f".dat) in MIMIC-IV-ECG folders on SeaweedFS S3 (127.0.0.1); labels ptbxl; zero-cost encoders")
    say(f"upload (not part of any figure): {objects:,} objects, {size / 1e6:,.0f} MB in {seconds:.0f} s = "
        f"{objects / seconds:,.0f} objects/s, {size / 1e6 / seconds:.1f} MB/s, {UPLOAD_IN_FLIGHT} requests in flight")
    say()
    rows = []

    def row(step, records, wall=None, cpu=None, busy_s=None, note=""):
        rows.append((step, records, wall, cpu, busy_s, note))

    count, t = f["listing"]
    row("discovery: listing", count, t.wall, t.cpu, note="one recursive listing + classification")
    count, t = f["manifest_csv"]
    row("discovery: manifest CSV", count, t.wall, t.cpu, note="record_list.csv + one listing (fingerprints)")
    for key, label in (("sample", "prepare, in process, 100 Hz"), ("sample_500hz", "prepare, in process, 500 Hz")):
        s = f[key]
        parts = ", ".join(f"{k} {v / s['records'] * 1e3:.2f}" for k, v in s["busy"].items())
        row(label, s["records"], s["prepare"].wall, s["prepare"].cpu,
            note=f"ms/record wall: {parts}; CPU: fetch {s['fetch_cpu'] / s['records'] * 1e3:.2f} (2 GETs), "
                 f"the rest {(s['prepare'].cpu - s['fetch_cpu']) / s['records'] * 1e3:.2f}")
    prep_busy = sum(busy.get(k, 0.0) for k in ("fetch", "decode", "preprocess"))
    row("prepare, pipeline", stats["records"]["read"], busy_s=prep_busy,
        note=", ".join(f"{k} {busy.get(k, 0.0):.0f} s" for k in ("fetch", "decode", "preprocess")))
    models_busy = sum(busy.get(r, 0.0) for r in full["models"])
    row("model stages (zero-cost), pipeline", stats["records"]["read"], busy_s=models_busy,
        note="column conversion + bookkeeping, both models")
    s = f["sample"]
    row("model stages (zero-cost), in process", s["records"], s["stages"].wall, s["stages"].cpu)
    row("write, in process", s["records"], s["write"].wall, s["write"].cpu, note="one sink task, 2 embeddings "
        "tables + scores + ledger")
    row("write, pipeline", n, busy_s=busy.get("write", 0.0), note=f"{sum(1 for _ in commit_tables)} tables")
    row("commit, pipeline", n, busy_s=stats["commit_seconds"],
        note="; ".join(f"{k} {v['seconds']:.2f}" for k, v in commit_tables.items()))
    row("write + commit, pipeline", n, busy_s=busy.get("write", 0.0) + stats["commit_seconds"])
    count, t = f["ledger_read"]
    row("ledger read", n, t.wall, t.cpu, note=f"{count:,} ledger rows")
    count, t, left = f["anti_join"]
    row("ledger anti-join (select_work)", count, t.wall, t.cpu, note=f"{left} records left to do")
    row("full run (run() to commit)", n, f["full_wall"], note=f"manifest seconds {full['seconds']:.1f}")
    row("no-op rerun", n, f["no-op_wall"], note=f"{noop['selected']} records selected")

    say(f"{'step':38s} {'records':>8s} {'wall s':>8s} {'CPU s':>7s} {'busy s':>7s} {'rec/s':>8s} {'rec/CPU-s':>9s}  notes")
    for step, records, wall, cpu, busy_s, note in rows:
        seconds = wall if wall is not None else busy_s
        rate = records / seconds if seconds else float("nan")
        per_core = records / cpu if cpu else (records / busy_s if busy_s else None)
        say(f"{step:38s} {records:8,d} {_num(wall, 8, 2)} {_num(cpu, 7, 2)} {_num(busy_s, 7, 1)} "
            f"{rate:8,.0f} {_num(per_core, 9, 0)}  {note}")
    say("  rec/CPU-s: records per CPU-second of this process (in-process rows) or per busy second summed over "
        "Ray tasks (pipeline rows)")
    say()
    hops = f["sample"]["hops"]
    per = {k: v / f["sample"]["records"] for k, v in hops.items()}
    through = per["manifest"] + per["prepare"] + sum(v for k, v in per.items() if k.startswith("after "))
    say("bytes per record through Ray's object store (Arrow blocks each operator outputs, in-process sample):")
    say(f"  manifest {per['manifest']:,.0f}; prepare {per['prepare']:,.0f} (" + ", ".join(
        f"{k.split(':', 1)[1]} {v:,.0f}" for k, v in per.items() if k.startswith("prepare:"))
        + "); " + "; ".join(f"{k} {v:,.0f}" for k, v in per.items() if k.startswith("after ")))
    say(f"  put into the object store per record, all operators: {through:,.0f} B")
    say(f"S3 bytes read per record (header + signal file): 100 Hz {f['record_bytes']:,} B; "
        f"MIMIC-layout 500 Hz {f['mimic_record_bytes']:,.0f} B")
    say("output bytes per record (Delta tables on S3, Parquet zstd): " + "; ".join(
        f"{t} {b / n:,.0f}" for t, b in sorted(f["tables"].items())) + f"; total {sum(f['tables'].values()) / n:,.0f}")
    say()
    s, m = f["sample"], f["sample_500hz"]
    say("ratios:")
    say(f"  no-op rerun / full run (wall): {f['no-op_wall'] / f['full_wall']:.3f}  (goal <= 0.05)")
    say(f"  prepare per CPU-s, 500 Hz MIMIC layout / 100 Hz: "
        f"{(m['records'] / m['prepare'].cpu) / (s['records'] / s['prepare'].cpu):.2f}")
    say(f"  prepare per core, pipeline busy / in process CPU (100 Hz): "
        f"{(stats['records']['read'] / prep_busy) / (s['records'] / s['prepare'].cpu):.2f}")
    say(f"  write + commit / prepare, pipeline busy seconds: "
        f"{(busy.get('write', 0.0) + stats['commit_seconds']) / prep_busy:.3f}")
    say(f"  commit, sum of table commits / commit_seconds: {commit_sum / stats['commit_seconds']:.2f}")
    say(f"  manifest CSV / listing (wall): {f['manifest_csv'][1].wall / f['listing'][1].wall:.2f}")
    say()
    say(f"command: python bench/bench_scale.py --records {n} --sample {sample}" + (" (--small)" if args.small else ""))


def _num(value, width: int, digits: int) -> str:
    return f"{value:{width},.{digits}f}" if value is not None else " " * (width - 1) + "-"


if __name__ == "__main__":
    main()
