"""No secret in any log, manifest or table: a real run with sentinel secrets, then grep everything.

The run is the real command in a subprocess with its own local Ray (its own temp folder), so
Ray's log folder is this run's alone. Secrets are in the environment (AWS keys, session token,
Hugging Face token) and in an input URI (userinfo and a signed query string, read over HTTP).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SENTINELS = {
    "AWS_ACCESS_KEY_ID": "AKIASENTINELKEYID0001",
    "AWS_SECRET_ACCESS_KEY": "sentinelSecretAccessKey0002",
    "AWS_SESSION_TOKEN": "sentinelSessionToken0003",
    "HF_TOKEN": "hf_sentinelToken0004",
}
URI_PASSWORD = "sentinelUriPassword0005"
URI_SIGNATURE = "sentinelSignature0006"


def _files_containing(root: Path, needles: list[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                data = path.read_bytes()
            except OSError:
                continue
            hits = [n for n in needles if n.encode() in data]
            if hits:
                found[str(path)] = hits
    return found


def test_sentinel_secrets_reach_no_log_manifest_or_table(ecg_dir, http_server, tmp_path):
    served = tmp_path / "served"
    (served / "records").mkdir(parents=True)
    for name in ("E07500", "E07501"):
        for ext in (".hea", ".mat"):
            shutil.copy(ecg_dir / "cinc2021_torch-ecg" / f"{name}{ext}", served / "records" / f"{name}{ext}")
    local = tmp_path / "local"
    local.mkdir()
    for ext in (".hea", ".mat"):
        shutil.copy(ecg_dir / "cinc2021_torch-ecg" / f"E07502{ext}", local / f"E07502{ext}")
    base = http_server(served)
    host = base.removeprefix("http://")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path\n"
                        f"http://reader:{URI_PASSWORD}@{host}/records/E07500.hea\n"
                        f"http://{host}/records/E07501.hea?X-Amz-Signature={URI_SIGNATURE}&X-Amz-Expires=60\n"
                        f"http://reader:{URI_PASSWORD}@{host}/records/missing.hea\n")
    out = tmp_path / "out"
    ray_tmp = Path(tempfile.mkdtemp(prefix="ecgr", dir="/tmp"))     # Ray's socket paths must stay short
    env = {**os.environ, **SENTINELS, "RAY_TMPDIR": str(ray_tmp), "PYTHONPATH": str(REPO),
           "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", "AWS_EC2_METADATA_DISABLED": "true"}
    for var in ("RAY_ADDRESS", "AWS_ENDPOINT_URL"):
        env.pop(var, None)
    proc = subprocess.run([sys.executable, "-m", "ecgembed.cli", "run", "--input", str(manifest), "--input",
                           str(local), "--output", str(out), "--stand-in", "--labels", "cpsc2018"],
                          env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    try:
        _check(proc, out, ray_tmp, host)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _check(proc, out: Path, ray_tmp: Path, host: str) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    needles = [*SENTINELS.values(), URI_PASSWORD, URI_SIGNATURE]
    assert not [n for n in needles if n in proc.stdout + proc.stderr]
    assert not _files_containing(out, needles)
    assert not _files_containing(ray_tmp, needles), "Ray's log folder holds a secret"
    assert any(ray_tmp.rglob("*.log")), "the run's Ray logs were not where the test looked"
    # the run did read the records behind the secret URIs (and reports the missing one), and the
    # stored URIs name them without the secrets
    from ecgembed.tables.views import connect

    con = connect(str(out))
    assert con.execute("SELECT count(*) FROM melp_current").fetchall()[0][0] == 3
    uris = {u for (u,) in con.execute("SELECT source_uri FROM melp_current UNION SELECT source_uri FROM errors")
            .fetchall()}
    assert f"http://{host}/records/E07500.hea" in uris and f"http://{host}/records/E07501.hea?X-Amz-Expires=60" in uris
    assert con.execute("SELECT error_type FROM errors").fetchall() == [("missing_file",)]
