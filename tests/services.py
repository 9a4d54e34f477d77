"""Real services on loopback for tests and benchmarks: a SeaweedFS S3 server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

S3_KEY, S3_SECRET, S3_BUCKET = "ecgembed-test", "ecgembed-test-secret", "ecg"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.1)
    return False


class S3Server:
    """A running SeaweedFS S3 gateway; ``stop()``/``start()`` simulate an outage."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.bucket = S3_BUCKET
        self.key, self.secret = S3_KEY, S3_SECRET
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._ports = {name: free_port() for name in (
            "s3.port.grpc", "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
            "filer.port", "filer.port.grpc", "admin.port", "admin.port.grpc")}
        self.proc: subprocess.Popen | None = None
        self._fs = None

    def start(self) -> None:
        weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "tester", "credentials": [{"accessKey": self.key, "secretKey": self.secret}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}))
        (self.workdir / "data").mkdir(exist_ok=True)
        args = [weed, "mini", f"-dir={self.workdir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-master.telemetry=false", "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0",
                "-s3.port.lance=0", f"-s3.port={self.port}", f"-s3.config={config}", f"-bucket={self.bucket}"]
        args += [f"-{name}={port}" for name, port in self._ports.items()]
        self.log = open(self.workdir / "weed.log", "ab")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        if not _wait_port(self.port, 60):
            self.stop()
            raise RuntimeError(f"SeaweedFS did not open port {self.port}; see {self.workdir / 'weed.log'}")
        self._wait_ready()

    def _wait_ready(self, timeout: float = 60) -> None:
        """The port opens before the filer can store objects: wait for a real write."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                fs = self.fs
                fs.pipe_file(f"{self.bucket}/.ready", b"ok")
                fs.invalidate_cache()
                return
            except Exception:  # noqa: BLE001 - retried until the deadline, then re-raised
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 2 s (graceful shutdown of weed takes up to 13 s)."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(2)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None

    @property
    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.key,
                "AWS_SECRET_ACCESS_KEY": self.secret, "AWS_DEFAULT_REGION": "us-east-1"}

    @property
    def fs(self):
        if self._fs is None:
            import s3fs

            self._fs = s3fs.S3FileSystem(key=self.key, secret=self.secret, skip_instance_cache=True,
                                         client_kwargs={"endpoint_url": self.endpoint, "region_name": "us-east-1"})
        return self._fs

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key.lstrip('/')}"

    def put_dir(self, local: Path, prefix: str) -> str:
        """Upload a local folder under ``prefix``; returns its s3:// URI."""
        for path in sorted(Path(local).rglob("*")):
            if path.is_file():
                self.fs.pipe_file(f"{self.bucket}/{prefix}/{path.relative_to(local).as_posix()}", path.read_bytes())
        self.fs.invalidate_cache()
        return self.url(prefix)
