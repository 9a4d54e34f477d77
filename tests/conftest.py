"""Session fixtures: real services on loopback, real ECGs, conformance weights.

- ``s3``: a SeaweedFS server (``weed mini``) on 127.0.0.1 with every port chosen explicitly and
  real credentials; the AWS_* variables point at it for the whole session.
- ``http_server``: serves a local folder over HTTP on 127.0.0.1 (also speaks the small part of
  the Hugging Face Hub protocol that ``hf_hub_download`` uses, under ``/<org>/<repo>/resolve/``).
- ``ray_local``: one local Ray per session (2 CPUs, no dashboard).
- ``shared_dir`` and the weights fixtures need ``../shared`` (conformance data and real ECGs);
  without it they skip with the reason.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

import pytest

from tests.services import S3Server

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- shared data
def _shared_path() -> Path:
    return Path(os.environ.get("ECGEMBED_SHARED", REPO.parent / "shared")).resolve()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    path = _shared_path()
    if not (path / "conformance").is_dir() or not (path / "data" / "ecg").is_dir():
        pytest.skip(f"needs the shared conformance data and ECGs at {path} (set ECGEMBED_SHARED)")
    return path


@pytest.fixture(scope="session")
def ecg_dir(shared_dir) -> Path:
    return shared_dir / "data" / "ecg"


def _run_make_weights(script: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"{script} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


@pytest.fixture(scope="session")
def melp_weights_dir(shared_dir, tmp_path_factory) -> Path:
    """The MELP stand-in checkpoint in the released layout (+ the tiny text tower)."""
    out = tmp_path_factory.mktemp("melp_weights")
    _run_make_weights(shared_dir / "conformance" / "melp" / "make_weights.py", "--out", str(out))
    return out


@pytest.fixture(scope="session")
def ked_weights_file(shared_dir, tmp_path_factory) -> Path:
    """The ECGFM-KED stand-in checkpoint (released top-level layout, tiny text BERT)."""
    out = tmp_path_factory.mktemp("ked_weights") / "ked_ref.pt"
    stdout = _run_make_weights(shared_dir / "conformance" / "ecgfm-ked" / "make_weights.py",
                               "--variant", "reference", "--out", str(out), "--verify")
    assert "digests match" in stdout, stdout
    return out


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch) -> Path:
    """A private weights/feature cache for one test."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("ECGEMBED_CACHE", str(cache))
    return cache


# --------------------------------------------------------------------------- S3 (SeaweedFS)
@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    server = S3Server(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    saved = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)
    try:
        yield server
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# --------------------------------------------------------------------------- HTTP (+ fake HF hub)
FAKE_HF_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _handler_for(directory: Path):
    class Handler(http.server.SimpleHTTPRequestHandler):
        """Static files; ``/<org>/<repo>/resolve/<rev>/<file>`` maps to ``<dir>/<org>/<repo>/<file>``
        with the headers ``hf_hub_download`` needs (X-Repo-Commit, ETag)."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(directory), **kwargs)

        def translate_path(self, path):
            parts = urllib.parse.urlparse(path).path.strip("/").split("/")
            if len(parts) >= 5 and parts[2] == "resolve":
                self._hf = True
                path = "/" + "/".join(parts[:2] + parts[4:])
            return super().translate_path(path)

        def end_headers(self):
            if getattr(self, "_hf", False):
                local = Path(self.translate_path(self.path))
                if local.is_file():
                    etag = hashlib.sha256(local.read_bytes()).hexdigest()
                    self.send_header("X-Repo-Commit", FAKE_HF_COMMIT)
                    self.send_header("ETag", f'"{etag}"')
            super().end_headers()

        def log_message(self, *args):  # keep pytest output clean
            pass

    return Handler


class _QuietServer(http.server.ThreadingHTTPServer):
    """A client that stops reading on purpose (a reader enforcing a size cap) is not an error."""

    def handle_error(self, request, client_address):
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


@pytest.fixture(scope="session")
def http_server():
    """``http_server(directory) -> base URL`` of a loopback HTTP server for that folder."""
    servers = []

    def start(directory) -> str:
        server = _QuietServer(("127.0.0.1", 0), _handler_for(Path(directory)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def hf_hub(http_server, monkeypatch):
    """``hf_hub(folder) -> base URL``: serve ``folder/<org>/<repo>/<file>`` as a Hugging Face Hub.

    huggingface_hub reads its endpoint at import, so the constants are patched for the test.
    """
    import huggingface_hub.constants as hfc

    def serve(folder) -> str:
        base = http_server(folder)
        monkeypatch.setenv("HF_ENDPOINT", base)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(hfc, "ENDPOINT", base)
        monkeypatch.setattr(hfc, "HUGGINGFACE_CO_URL_TEMPLATE", base + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", False)
        return base

    return serve


# --------------------------------------------------------------------------- Ray
@pytest.fixture(scope="session")
def ray_local(s3):
    """One local Ray for the session; workers see the S3 fixture through their env."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Loopback only, and joined by subprocesses (`ecgembed run` with RAY_ADDRESS) that would not hold
    # a generated auth token: the same setting as the multi-node fixture, whatever ran first
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # PYTHONPATH: workers can import the `tests` package (fault-injection hooks live there)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True,
             runtime_env={"env_vars": {**s3.env, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO)}})
    try:
        yield ray
    finally:
        ray.shutdown()
