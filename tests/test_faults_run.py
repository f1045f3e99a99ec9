"""Faults around a run, each run for real on the command line in subprocesses: two runs on one
output folder, a run killed mid-way (its lock, its temporary checkpoint), a cut-short line in
``log.txt``, a full disk (a file-size limit), a read-only folder and an output folder under a
file. Every case ends with one line naming the file or folder and a non-zero exit, or goes on
safely; no good checkpoint or log line changes."""
import errno
import hashlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from tests.engine_helpers import ROOT, read_log, subprocess_env, tiny_argv
from tests.pretrain_helpers import pretrain_argv

SCRIPT = os.path.join(ROOT, "run_class_apt.py")


def _start(argv, preexec_fn=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, SCRIPT, *argv], cwd=ROOT, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=preexec_fn)


def _run(argv, preexec_fn=None, script=SCRIPT) -> subprocess.CompletedProcess:
    """Run a script to its end; unlike ``run_cli``, a non-zero exit is a result to check."""
    return subprocess.run([sys.executable, script, *argv], cwd=ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=240, preexec_fn=preexec_fn)


def _wait_for(path: str, proc: subprocess.Popen, seconds: float = 120.0) -> None:
    deadline = time.time() + seconds
    while not os.path.exists(path):
        assert proc.poll() is None, f"the run ended before writing {path}:\n" \
                                    f"{proc.communicate()[1][-3000:]}"
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _hashes(folder: str) -> dict:
    """sha256 of every file directly in ``folder`` except ``run.log`` (a restart appends to it)."""
    out = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if os.path.isfile(path) and name != "run.log":
            with open(path, "rb") as f:
                out[name] = hashlib.sha256(f.read()).hexdigest()
    return out


def _error_lines(stderr: str) -> list:
    return [line for line in stderr.splitlines() if " ERROR " in line]


def _all_json(output_dir: str) -> list:
    """Every line of log.txt, each parsed (fails on any line that is not one JSON object)."""
    with open(os.path.join(output_dir, "log.txt"), encoding="utf-8") as f:
        lines = f.read().split("\n")
    assert lines[-1] == "", "log.txt does not end with a newline"
    records = [json.loads(line) for line in lines[:-1]]
    assert all(isinstance(r, dict) for r in records)
    return records


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.fixture(scope="module")
def trained(data, backbone, tmp_path_factory):
    """A finished one-epoch run (checkpoint-0, -best, -last, log.txt): copied by each test."""
    out = str(tmp_path_factory.mktemp("trained") / "run")
    proc = _run(tiny_argv(data, out, finetune=backbone))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _copy(trained: str, tmp_path) -> str:
    out = str(tmp_path / "run")
    shutil.copytree(trained, out)
    return out


def _resume_argv(data, backbone, out, epochs=2, **flags):
    return tiny_argv(data, out, finetune=backbone, epochs=epochs, **flags)


# ---------------------------------------------------------------------------------- run lock
def test_second_run_on_a_folder_refuses_and_the_first_finishes_unharmed(data, backbone,
                                                                         tmp_path):
    out = str(tmp_path / "run")
    first = _start(tiny_argv(data, out, finetune=backbone, epochs=2))
    try:
        _wait_for(os.path.join(out, "run.lock.holder"), first)
        first.send_signal(signal.SIGSTOP)  # holds the folder for as long as the second tries
        second = _run(tiny_argv(data, out, finetune=backbone, epochs=2))
    finally:
        first.send_signal(signal.SIGCONT)
    stdout, stderr = first.communicate(timeout=240)
    assert first.returncode == 0, stderr[-3000:]

    assert second.returncode == 2
    errors = _error_lines(second.stderr)
    assert len(errors) == 1 and "Traceback" not in second.stderr, second.stderr[-3000:]
    assert f"--output_dir {out} is in use by another run" in errors[0]
    assert f"pid {first.pid} on host {socket.gethostname()}" in errors[0]
    # The first run's records are its own: two epochs and the test, no line of the second.
    records = _all_json(out)
    assert [r["epoch"] for r in records if "epoch" in r] == [0, 1]
    assert sum("Final top-1" in r for r in records) == 1
    assert not os.path.exists(os.path.join(out, "run.lock.holder"))  # released at the end


def test_refusal_under_torchrun_stops_every_rank(data, backbone, tmp_path):
    """Rank 0 is refused the lock; rank 1 learns it from rank 0 and stops too (no hang)."""
    from utils import free_port
    from utils.runlock import RunLock
    out = str(tmp_path / "run")
    os.makedirs(out)
    lock = RunLock(out)
    lock.acquire()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
             "--master_addr=127.0.0.1", f"--master_port={free_port()}", SCRIPT,
             *tiny_argv(data, out, finetune=backbone)],
            cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=180)
    finally:
        lock.release()
    assert proc.returncode != 0
    assert f"[rank 0] ERROR run_class_apt: --output_dir {out} is in use by another run " \
           f"(pid {os.getpid()}" in proc.stderr, proc.stderr[-3000:]
    assert "[rank 1] ERROR run_class_apt: rank 0 could not start the run: --output_dir" \
        in proc.stderr, proc.stderr[-3000:]


def test_pretraining_refuses_a_folder_in_use(tmp_path):
    from utils.runlock import RunLock
    out = str(tmp_path / "pre")
    os.makedirs(out)
    lock = RunLock(out)
    lock.acquire()
    try:
        proc = _run(pretrain_argv(str(tmp_path / "no_data"), out),
                    script=os.path.join(ROOT, "run_mae_pretraining.py"))
    finally:
        lock.release()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"--output_dir {out} is in use by another run (pid {os.getpid()}" in proc.stderr


def test_killed_run_lock_and_temporary_checkpoints_then_resume(data, backbone, trained,
                                                               tmp_path):
    out = _copy(trained, tmp_path)
    killed = _start(_resume_argv(data, backbone, out, epochs=50))
    _wait_for(os.path.join(out, "run.lock.holder"), killed)
    killed.kill()  # SIGKILL: no clean-up runs; its lock record stays behind
    killed.communicate()
    # What a save cut short by the kill leaves: half a checkpoint under the dead pid's name.
    with open(os.path.join(out, "checkpoint-last.pth"), "rb") as f:
        half = f.read()[:9000]
    stale = os.path.join(out, f"checkpoint-last.pth.tmp.{killed.pid}")
    with open(stale, "wb") as f:
        f.write(half)
    other_dead = os.path.join(out, f"checkpoint-1.pth.tmp.{_dead_pid()}")
    shutil.copyfile(stale, other_dead)
    live = os.path.join(out, f"checkpoint-3.pth.tmp.{os.getpid()}")  # a live writer's: kept
    shutil.copyfile(stale, live)

    # The kill may also have cut a save of its own short (another checkpoint's temporary file).
    dead = [n for n in os.listdir(out) if ".tmp." in n and not n.endswith(f".{os.getpid()}")]
    assert len(dead) >= 2
    last_epoch = torch.load(os.path.join(out, "checkpoint-last.pth"), weights_only=True)["epoch"]

    proc = _run(_resume_argv(data, backbone, out, epochs=2))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"taking over the run lock left by pid {killed.pid} on host " \
           f"{socket.gethostname()}" in proc.stderr
    assert f"removed {len(dead)} temporary file(s) left in {out} by killed runs (0.0 MB " \
           f"freed)" in proc.stderr
    assert not any(os.path.exists(os.path.join(out, n)) for n in dead)
    assert os.path.exists(live)
    # Under load the killed run may have finished an epoch before the kill: it resumes from
    # whatever checkpoint-last holds, and the log keeps one record per finished epoch.
    assert f"resumed from {out}/checkpoint-last.pth (epoch {last_epoch}" in proc.stderr
    epochs = [r["epoch"] for r in _all_json(out) if "epoch" in r]
    assert epochs == sorted(set(epochs)) and epochs[0] == 0
    assert last_epoch >= 1 or epochs[-1] == 1


# ------------------------------------------------------------------------------------- log.txt
def test_partial_last_log_line_is_moved_aside_on_resume(data, backbone, trained, tmp_path):
    out = _copy(trained, tmp_path)
    cut = '{"train_loss": 1.09, "train_lr": 0.00'
    with open(os.path.join(out, "log.txt"), "a", encoding="utf-8") as f:
        f.write(cut)  # a run killed in the middle of writing its record
    proc = _run(_resume_argv(data, backbone, out, epochs=2))
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = _all_json(out)  # every line one JSON object: nothing glued onto the cut line
    assert [r["epoch"] for r in records if "epoch" in r] == [0, 1]
    with open(os.path.join(out, "log.txt.partial"), encoding="utf-8") as f:
        assert f.read() == cut + "\n"
    assert f"{out}/log.txt: its last line was cut short" in proc.stderr


def test_last_line_without_its_newline_is_ended(tmp_path):
    from utils.logs import append_json_line
    path = str(tmp_path / "log.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write('{"epoch": 0}\n{"epoch": 1}')  # only the newline was lost
    append_json_line(path, {"epoch": 2})
    assert [r["epoch"] for r in read_log(str(tmp_path))] == [0, 1, 2]
    assert not os.path.exists(path + ".partial")


def test_readers_skip_a_bad_log_line_naming_it(trained, tmp_path, caplog):
    out = _copy(trained, tmp_path)
    path = os.path.join(out, "log.txt")
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines(keepends=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines([lines[0], '{"train_loss": 1.0, "ep\n', *lines[1:]])
    proc = subprocess.run([sys.executable, "tools/compare_runs.py", out, "--no_flops", "--plot",
                           str(tmp_path / "plot.png")], cwd=ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{path} line 2 skipped: not JSON" in proc.stderr
    assert os.path.getsize(tmp_path / "plot.png") > 0
    from tools.demo_stages import read_log as demo_read_log
    assert demo_read_log(path) == [json.loads(line) for line in lines]  # all but the bad one
    assert f"{path} line 2 skipped" in caplog.text


# ---------------------------------------------------------------------------------- write errors
def _file_size_limit(limit: int):
    def preexec() -> None:  # in the child: EFBIG from write() instead of death by SIGXFSZ
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


def _assert_one_line(proc, needle: str) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = _error_lines(proc.stderr)
    assert len(errors) == 1 and needle in errors[0], proc.stderr[-3000:]
    return errors[0]


def test_full_disk_at_a_checkpoint_save_names_the_file(data, backbone, trained, tmp_path):
    out = _copy(trained, tmp_path)
    before = _hashes(out)
    checkpoint = os.path.getsize(os.path.join(out, "checkpoint-last.pth"))
    limit = checkpoint * 2 // 3  # above every log file, below a checkpoint
    assert os.path.getsize(os.path.join(out, "run.log")) * 2 < limit
    proc = _run(_resume_argv(data, backbone, out, epochs=2), preexec_fn=_file_size_limit(limit))
    line = _assert_one_line(proc, f"cannot write {out}/checkpoint-")
    assert ".pth: File too large (the file-size limit (ulimit -f) is reached" in line
    after = _hashes(out)
    for name in ("checkpoint-0.pth", "checkpoint-best.pth", "checkpoint-last.pth"):
        assert after[name] == before[name], f"{name} changed"
    assert not [n for n in os.listdir(out) if ".tmp." in n]  # the temporary file is removed
    assert _all_json(out) == [json.loads(line) for line in open(os.path.join(trained, "log.txt"))]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a chmod 0o555 folder anyway; "
                                               "the ENOTDIR test covers the same path as root")
def test_read_only_output_folder(data, backbone, trained, tmp_path):
    out = _copy(trained, tmp_path)
    before = _hashes(out)
    os.chmod(out, 0o555)
    try:
        proc = _run(_resume_argv(data, backbone, out, epochs=2))
    finally:
        os.chmod(out, 0o755)
    _assert_one_line(proc, f"cannot write {out}/")
    assert "Permission denied" in proc.stderr
    assert _hashes(out) == before


def test_output_dir_under_a_file(data, backbone, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_bytes(b"not a folder\n")
    out = str(blocker / "run")
    proc = _run(tiny_argv(data, out, finetune=backbone, log_dir=None))
    line = _assert_one_line(proc, f"cannot write {out}: Not a directory")
    assert "pass another --output_dir" in line
    assert blocker.read_bytes() == b"not a folder\n"


def test_write_error_of_a_torch_save_names_the_file(tmp_path):
    """torch reports a failed write as a RuntimeError chained to the OSError: it is found."""
    from utils.outputs import OutputWriteError, atomic_torch_save
    import torch
    path = str(tmp_path / "checkpoint-last.pth")
    atomic_torch_save({"x": torch.zeros(3)}, path)
    good = open(path, "rb").read()

    class Full(torch.nn.Module):
        def __reduce_ex__(self, protocol):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OutputWriteError, match=r"cannot write .*checkpoint-last.pth: No space "
                                               r"left on device \(the disk is full: free space"):
        atomic_torch_save({"x": Full()}, path)
    assert open(path, "rb").read() == good
    assert os.listdir(tmp_path) == ["checkpoint-last.pth"]
