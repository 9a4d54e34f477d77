"""For the person on call: every expected failure is one line and an honest exit code.

The real command in a subprocess (and `jobs/embed_ecgs.py`, which must behave the same), with a
pseudo-terminal for the progress bar.
"""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLES = str(resources.files("ecgembed") / "samples")


def _env(**extra) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", **extra}
    return {k: v for k, v in env.items() if v is not None}


def _cli(*args, env=None, timeout=300, job=False) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "jobs" / "embed_ecgs.py")] if job else [sys.executable, "-m", "ecgembed.cli"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout, env=env or _env(),
                          cwd=REPO)


def _one_error_line(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("[ecgembed] ")]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("ecgembed: error: ") and "Traceback" not in proc.stderr
    return lines[0]


class _Ran:
    """What an in-process call of an entry point printed and returned (as the subprocess would)."""

    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def _call(capsys, *args: str, job: bool = False) -> _Ran:
    """``ecgembed ARGS`` or ``jobs/embed_ecgs.py ARGS`` in this process: the same code the scripts run."""
    from ecgembed.cli import main, run_main

    capsys.readouterr()
    try:
        code = run_main(list(args), prog="embed_ecgs.py") if job else main(list(args))
    except SystemExit as exit_:          # argparse's own errors and --version
        code = exit_.code
    out = capsys.readouterr()
    return _Ran(code, out.out, out.err)


def test_version_and_bad_options(tmp_path, capsys):
    assert _cli("--version").stdout.strip().startswith("ecgembed ")                # the real command, once
    assert _cli("--version", job=True).stdout.strip().startswith("ecgembed ")      # and the job script, once
    assert _call(capsys, "run", "--no-such-flag").returncode == 2
    for job in (False, True):
        args = ("run",) if not job else ()
        missing_input = _call(capsys, *args, "--output", str(tmp_path / "out"), "--stand-in", job=job)
        assert missing_input.returncode == 2 and "--input is required" in _one_error_line(missing_input)
    bad_id = _call(capsys, "run", "--input", SAMPLES, "--output", str(tmp_path / "o"), "--stand-in", "--run-id",
                   "../../x")
    assert bad_id.returncode == 2 and "--run-id must match" in _one_error_line(bad_id)
    assert not (tmp_path / "x").exists() and not (tmp_path.parent / "x").exists()
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    not_dir = _call(capsys, "run", "--input", SAMPLES, "--output", str(a_file), "--stand-in")
    assert not_dir.returncode == 2 and "is a file" in _one_error_line(not_dir)


def test_weights_unavailable_is_exit_3_from_both_entry_points(tmp_path, capsys):
    for job in (False, True):
        args = ("run",) if not job else ()
        ran = _call(capsys, *args, "--input", SAMPLES, "--output", str(tmp_path / "out"), "--models", "melp",
                    "--melp-weights", str(tmp_path / "nowhere"), job=job)
        assert ran.returncode == 3, ran.stderr
        assert "model weights unavailable" in _one_error_line(ran)


def test_storage_without_credentials_is_one_line_with_the_fix(s3, tmp_path, capsys, monkeypatch):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for args in (("inspect", s3.url("nothing/")),
                 ("run", "--input", s3.url("nothing/"), "--output", str(tmp_path / "o"), "--stand-in"),
                 ("sql", s3.url("nothing/"), "SELECT 1")):
        ran = _call(capsys, *args)
        assert ran.returncode == 2, (args, ran.stderr)
        assert "credentials are missing" in _one_error_line(ran) and "AWS_ACCESS_KEY_ID" in ran.stderr


def test_sql_errors_are_one_line(tmp_path, capsys):
    ran = _call(capsys, "sql", str(tmp_path), "SELECT * FROM no_such_table")
    assert ran.returncode == 2 and "no_such_table" in _one_error_line(ran)


def test_locked_output_is_exit_4(tmp_path):
    from ecgembed.tables.lock import OutputLock

    out = tmp_path / "out"
    with OutputLock(str(out), "someone-else"):          # a real second process is refused
        proc = _cli("run", "--input", SAMPLES, "--output", str(out), "--stand-in")
    assert proc.returncode == 4 and "someone-else" in _one_error_line(proc)


def _run_in_pty(args: list[str], env: dict, timeout: float, interrupt_when: bytes | None = None) -> tuple[int, str]:
    """Run the command with its stdout/stderr on a pseudo-terminal; optionally SIGINT it when a text appears."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "ecgembed.cli", *args], stdin=follower, stdout=follower,
                            stderr=follower, env=env, cwd=REPO, start_new_session=True)
    os.close(follower)
    out, deadline, sent = b"", time.monotonic() + timeout, False
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        if interrupt_when and not sent and interrupt_when in out:
            proc.send_signal(signal.SIGINT)
            sent = True
        if proc.poll() is not None and not ready:
            break
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"timed out; output so far:\n{out.decode(errors='replace')[-3000:]}")
    os.close(leader)
    return proc.wait(timeout=60), out.decode(errors="replace")


def test_a_terminal_shows_one_bar_no_ray_blocks_and_strict_fails_with_5(tmp_path):
    out = tmp_path / "out"
    code, text = _run_in_pty(["run", "--input", SAMPLES, "--output", str(out), "--stand-in", "--labels", "cpsc2018",
                              "--strict", "--run-id", "night-1"], _env(), timeout=400)
    assert code == 5, text[-3000:]
    lines = text.replace("\r\n", "\n").split("\n")
    assert not [line for line in lines if "logging_progress" in line or "Running Dataset" in line], text[-3000:]
    assert not [line for line in lines if " E " in line[:40] or "ERROR" in line], text[-3000:]
    bar_frames = [f for f in text.split("\r") if "█" in f or "░" in f]
    assert bar_frames and all("%" in f and "rec/s" in f for f in bar_frames)
    assert "100%" in text and "errors by type: truncated 1" in text and "ecgembed sql" in text
    # what the terminal shows of each line is the text after its last carriage return: the bar is
    # cleared before every message, so no message shares its line with the bar
    visible = [line.split("\r")[-1].replace("\x1b[2K", "") for line in lines]
    bars = [line for line in visible if line.startswith(("[ecgembed] █", "[ecgembed] ░"))]
    messages = [line for line in visible if line.startswith("[ecgembed] ") and line not in bars]
    assert any("run night-1 committed" in line for line in messages)
    assert not [line for line in messages if "░" in line or "█" in line]
    assert len(bars) == 1 and "100%" in bars[0] and "6/6" in bars[0]     # the final state stays on screen
    again = _cli("run", "--input", SAMPLES, "--output", str(out), "--stand-in", "--run-id", "night-1")
    assert again.returncode == 2 and "night-1" in _one_error_line(again)


def test_ctrl_c_is_exit_130_and_commits_nothing(tmp_path, ray_local):
    out = tmp_path / "out"
    # the model batches wait, so Ctrl-C lands mid-run; the command joins the session's Ray (as under
    # `ray job submit`), which is why it names its device
    env = _env(ECGEMBED_FAULT_HOOK="tests.faults:slow:30", RAY_ADDRESS=ray_local.get_runtime_context().gcs_address)
    code, text = _run_in_pty(["run", "--input", SAMPLES, "--output", str(out), "--stand-in", "--labels", "cpsc2018",
                              "--device", "cpu"], env, timeout=300, interrupt_when=b"model actors on")
    assert code == 130, text[-3000:]
    assert "ecgembed: interrupted" in text and "Traceback" not in text
    from ecgembed.tables.commit import read_runs

    assert read_runs(str(out)) == []
    from ecgembed.tables.lock import OutputLock

    assert OutputLock(str(out), "probe").current()[1]["state"] == "released"


def test_a_bug_is_exit_1_with_the_traceback_and_one_closing_line(monkeypatch, capsys, tmp_path):
    import ecgembed.pipeline
    from ecgembed.cli import main

    def broken(config, log_line=None):
        raise AssertionError("an invariant ecgembed relies on did not hold")

    monkeypatch.setattr(ecgembed.pipeline, "run", broken)
    assert main(["run", "--input", SAMPLES, "--output", str(tmp_path / "out"), "--stand-in"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("ecgembed: internal error (a bug")
