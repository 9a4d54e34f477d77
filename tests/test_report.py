"""The run report, made from real pipeline outputs and opened in a real headless Chromium.

Chromium is driven over its DevTools protocol on a pipe (``--remote-debugging-pipe``: fd 3 in,
fd 4 out, NUL-separated JSON), so no websocket library is needed. The page must render every
figure (each ``<img>`` decoded to a non-zero size), log no console error (the page's strict
Content-Security-Policy turns any attempt to load a URL into one), and request nothing but its
own file and ``data:`` URIs.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from ecgembed.config import RunConfig
from ecgembed.errors import ConfigError
from ecgembed.pipeline import run
from ecgembed.report import build_report, write_report
from ecgembed.report.plots import pca_2d
from ecgembed.tables.views import connect

RECORDS = ("E07500", "E07501", "E07502", "E07503")


# --------------------------------------------------------------------------- a real browser
class Chromium:
    """A headless Chromium and the DevTools calls the tests need."""

    def __init__(self, profile: Path):
        exe = shutil.which("chromium")
        self._to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, self._from_chrome_w = os.pipe()
        self.log = profile / "chromium.log"
        args = [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
                f"--user-data-dir={profile}", "--no-first-run", "--disable-extensions", "--mute-audio",
                "--disable-background-networking", "--disable-component-update", "--disable-sync", "about:blank"]
        with open(self.log, "wb") as log:    # the shell maps our pipe ends onto fds 3 and 4
            self.proc = subprocess.Popen(
                ["bash", "-c", f'exec "$@" 3<&{self._to_chrome_r} 4>&{self._from_chrome_w}', "bash", *args],
                pass_fds=(self._to_chrome_r, self._from_chrome_w), stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        os.close(self._to_chrome_r)
        os.close(self._from_chrome_w)
        self._buffer, self._id, self.events = b"", 0, []

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._id:
                assert "error" not in reply, f"{method}: {reply['error']}"
                return reply["result"]

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._from_chrome], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError(f"chromium did not answer; its log:\n{self.log.read_text()[-2000:]}")
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium closed the pipe; its log:\n{self.log.read_text()[-2000:]}")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        message = json.loads(raw)
        if "method" in message:
            self.events.append(message)
        return message

    def open(self, path: Path) -> dict:
        """Load ``path`` in a new tab; returns what the page shows and what happened while loading."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=session)
        self.call("Emulation.setDeviceMetricsOverride", {"width": 1100, "height": 900, "deviceScaleFactor": 1,
                                                         "mobile": False}, session=session)
        first = len(self.events)
        self.call("Page.navigate", {"url": path.as_uri()}, session=session)
        deadline = time.monotonic() + 60
        while not any(e["method"] == "Page.loadEventFired" and e.get("sessionId") == session
                      for e in self.events[first:]):
            self._read(deadline)
        page = self.call("Runtime.evaluate", {"expression": PAGE_SUMMARY, "awaitPromise": True,
                                              "returnByValue": True}, session=session)
        assert "exceptionDetails" not in page, page
        time.sleep(0.3)                      # late console messages (none expected)
        self.call("Runtime.evaluate", {"expression": "1"}, session=session)
        events = [e for e in self.events[first:] if e.get("sessionId") == session]
        self.call("Target.closeTarget", {"targetId": target})
        summary = json.loads(page["result"]["value"])
        summary["console_errors"] = [e["params"] for e in events if
                                     (e["method"] == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
                                     or e["method"] == "Runtime.exceptionThrown"
                                     or (e["method"] == "Runtime.consoleAPICalled"
                                         and e["params"]["type"] in ("error", "assert"))]
        summary["requests"] = [e["params"]["request"]["url"] for e in events
                               if e["method"] == "Network.requestWillBeSent"]
        return summary

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except (TimeoutError, RuntimeError, AssertionError):
            pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_chrome)
        os.close(self._from_chrome)


# What the page shows once every image is decoded (decode() rejects for a broken image).
PAGE_SUMMARY = """
(async () => {
  const figures = [...document.querySelectorAll('figure.plot')];
  const decoded = await Promise.all(figures.map(f => f.querySelector('img').decode().then(() => true, () => false)));
  return JSON.stringify({
    title: document.title,
    figures: figures.map((f, i) => {
      const img = f.querySelector('img'), box = img.getBoundingClientRect();
      return {id: f.id, empty: f.dataset.empty === 'true', decoded: decoded[i], width: img.naturalWidth,
              height: img.naturalHeight, shown: [box.width, box.height]};
    }),
    standIn: document.getElementById('stand-in') ? document.getElementById('stand-in').innerText : null,
    tables: Object.fromEntries([...document.querySelectorAll('table[id]')].map(
      t => [t.id, [...t.tBodies[0].rows].map(r => [...r.cells].map(c => c.textContent))])),
    text: document.body.innerText,
  });
})()
"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if shutil.which("chromium") is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run installs it)")
    chromium = Chromium(tmp_path_factory.mktemp("chromium"))
    try:
        yield chromium
    finally:
        chromium.close()


# --------------------------------------------------------------------------- real outputs
@pytest.fixture(scope="module")
def outputs(ecg_dir, ray_local, tmp_path_factory):
    """A stand-in run over real records and two broken ones, then a quiet night; and a one-record MELP-only run."""
    root = tmp_path_factory.mktemp("report")
    archive = root / "in"
    (archive / "bad").mkdir(parents=True)
    for name in RECORDS:
        for ext in (".hea", ".mat"):
            shutil.copy(ecg_dir / "cinc2021_torch-ecg" / f"{name}{ext}", archive / f"{name}{ext}")
    shutil.copytree(ecg_dir / "ptbxl_records100", archive / "ptbxl")                  # 100 Hz
    mat = (ecg_dir / "cinc2021_torch-ecg" / "E07504.mat").read_bytes()
    shutil.copy(ecg_dir / "cinc2021_torch-ecg" / "E07504.hea", archive / "bad" / "E07504.hea")
    (archive / "bad" / "E07504.mat").write_bytes(mat[: len(mat) // 3])               # truncated
    (archive / "bad" / "garbage.hea").write_bytes(b"\x00\x01\x02 not a header")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ECGEMBED_CACHE", str(root / "cache"))
        main = run(RunConfig(inputs=[str(archive)], output=str(root / "out"), stand_in=True, labels=["cpsc2018"],
                             progress_interval_s=1))
        quiet = run(RunConfig(inputs=[str(archive)], output=str(root / "out"), stand_in=True, labels=["cpsc2018"]))
        single = archive / "E07500.hea"
        one = run(RunConfig(inputs=[str(single)], output=str(root / "one"), stand_in=True, models=("melp",)))
    return {"root": root, "archive": archive, "main": main, "quiet": quiet, "one": one}


def _check_page(page: dict) -> dict[str, dict]:
    """Every figure decoded and shown at a real size; no console error; no request leaves the file."""
    assert page["console_errors"] == []
    page_url, *others = page["requests"]
    assert page_url.startswith("file://") and all(url.startswith("data:image/svg+xml;base64,") for url in others)
    figures = {f["id"]: f for f in page["figures"]}
    for f in figures.values():
        assert f["decoded"] and f["width"] > 300 and f["height"] > 50, f
        assert f["shown"][0] > 300 and f["shown"][1] > 50, f
    return figures


def test_report_of_a_run_renders_every_plot_in_chromium(outputs, browser):
    main, out = outputs["main"], outputs["root"] / "out"
    written = write_report(str(out), run_id=main["run_id"])
    assert written == str(out / "_reports" / f"{main['run_id']}.html")
    page = browser.open(Path(written))
    figures = _check_page(page)
    expected = {"plot-throughput", "plot-stages", "plot-errors", "plot-quality", "plot-scores-ecgfm-ked-cpsc2018",
                "plot-map-melp", "plot-map-ecgfm-ked", "plot-history"}
    assert set(figures) == expected
    assert not any(f["empty"] for f in figures.values()), figures     # each one a plot, not a "nothing here"
    assert main["run_id"] in page["title"] and "STAND-IN WEIGHTS" in page["standIn"]
    # the numbers on the page are the tables' numbers
    con = connect(str(out))
    errors = con.execute("SELECT stage, error_type, count(*) FROM errors WHERE run_id = ? GROUP BY ALL",
                         [main["run_id"]]).fetchall()
    shown = {(s, t): int(n.replace(",", "")) for s, t, n in page["tables"]["errors-by-type"]}
    assert shown == {(s, t): n for s, t, n in errors} and {t for _, t in shown} == {"truncated", "bad_header"}
    assert {row[0] for row in page["tables"]["error-examples"]} == {"bad/E07504", "bad/garbage"}
    models = {row[0]: row for row in page["tables"]["models"]}
    assert models["melp"][4] == "no scores" and models["ecgfm-ked"][4].startswith("cpsc2018 (9 classes")
    assert f"{main['discovered']}\ndiscovered" in page["text"]
    # the throughput plot's samples: from the start to every processed record, in time order
    timeline = main["stats"]["timeline"]
    assert timeline[0] == [0.0, 0, 0] and timeline[-1][1] == main["selected"] and timeline[-1][2] >= 2
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in zip(timeline, timeline[1:]))


def test_an_evaluation_adds_its_roc_and_pr_curves_to_the_report(outputs, browser, tmp_path):
    """`ecgembed evaluate` against the headers' Dx codes, then the report shows its curves."""
    import shutil as sh

    from ecgembed.evaluate import evaluate

    out = tmp_path / "out"
    sh.copytree(outputs["root"] / "out", out)
    rows = evaluate(str(out), "header", "cpsc2018", model="ecgfm-ked", bootstrap=20)
    assert rows.num_rows > 0
    page = browser.open(Path(write_report(str(out), dest=str(tmp_path / "page.html"))))
    figures = _check_page(page)
    assert {"plot-eval-roc-ecgfm-ked-cpsc2018", "plot-eval-pr-ecgfm-ked-cpsc2018"} <= set(figures)
    assert "Zero-shot evaluation" in page["text"] and "header truth" in page["text"]


def test_progress_timeline_is_thinned_evenly_not_cut(ray_local):
    from ecgembed.progress import TIMELINE_POINTS, ProgressReporter

    reporter = ProgressReporter(total=5000, models=("melp",), interval=10)
    refreshes = 3 * TIMELINE_POINTS + 7
    for i in range(1, refreshes + 1):
        reporter._add_to_timeline(reporter.started + i, i, {"melp_failed": i // 100})
    timeline = reporter.timeline()
    assert TIMELINE_POINTS // 2 <= len(timeline) <= TIMELINE_POINTS + 1
    assert timeline[0] == [0.0, 0, 0] and timeline[-1] == [refreshes, refreshes, refreshes // 100]
    gaps = np.diff([t for t, _, _ in timeline])
    assert len(set(gaps[:-1].tolist())) == 1 and 0 < gaps[-1] <= gaps[0]     # even, then the latest sample


def test_report_has_no_patient_data(outputs):
    """No header comment (age, sex, diagnoses) and no error message reaches the page: only ids and numbers."""
    out = outputs["root"] / "out"
    _, page = build_report(str(out), outputs["main"]["run_id"])
    text = re.sub(r'src="data:[^"]*"', "", page)
    comments = [line.lstrip("#").strip() for hea in outputs["archive"].rglob("*.hea")
                for line in hea.read_text(errors="replace").splitlines() if line.startswith("#")]
    assert comments
    for comment in comments:
        assert comment not in text
        value = comment.split(":", 1)[-1].strip()
        assert len(value) < 5 or value not in text, comment
    messages = [m for (m,) in connect(str(out)).execute("SELECT message FROM errors").fetchall()]
    assert messages and not any(m in text for m in messages)


def test_report_of_a_quiet_night_and_of_a_one_record_run_without_scores(outputs, browser, tmp_path):
    out, quiet = outputs["root"] / "out", outputs["quiet"]
    assert quiet["selected"] == 0
    page = browser.open(Path(write_report(str(out), dest=str(tmp_path))))    # default run: the newest, the quiet one
    figures = _check_page(page)
    assert quiet["run_id"] in page["title"]
    empty = {i for i, f in figures.items() if f["empty"]}
    assert empty == {"plot-throughput", "plot-stages", "plot-errors", "plot-quality", "plot-scores", "plot-map-melp",
                     "plot-map-ecgfm-ked"}
    assert not figures["plot-history"]["empty"]
    runs = page["tables"]["runs"]
    assert [r[0] for r in runs] == [quiet["run_id"], outputs["main"]["run_id"]] and runs[0][3] == "0"

    one = outputs["one"]
    page = browser.open(Path(write_report(str(outputs["root"] / "one"), dest=str(tmp_path / "one.html"))))
    figures = _check_page(page)
    assert one["selected"] == 1 and {i for i, f in figures.items() if f["empty"]} == {"plot-errors", "plot-scores"}
    assert set(figures) == {"plot-throughput", "plot-stages", "plot-errors", "plot-quality", "plot-scores",
                            "plot-map-melp", "plot-history"}


def test_report_refuses_an_output_without_runs_and_an_unknown_run(outputs, tmp_path):
    with pytest.raises(ConfigError, match="no committed run"):
        write_report(str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match=f"no committed run .* has that id .*{outputs['quiet']['run_id']}"):
        write_report(str(outputs["root"] / "out"), run_id="20200101T000000Z-000000")


def test_pca_map_coordinates():
    rng = np.random.default_rng(0)
    line = np.outer(rng.normal(size=200), rng.normal(size=16)) + 5.0          # (200, 16) points on a line
    xy, ratio = pca_2d(line)
    assert ratio[0] == pytest.approx(1.0) and np.abs(xy[:, 1]).max() < 1e-6
    assert np.allclose(np.abs(xy[:, 0]), np.linalg.norm(line - line.mean(0), axis=1))
    xy, ratio = pca_2d(line[:1])                                              # one record: the origin
    assert xy.tolist() == [[0.0, 0.0]] and ratio.tolist() == [0.0, 0.0]
