"""The workdir lock (`mtl.workdir_lock`) and the workdir's JSON files (`mtl.workdir_files`).

Runs on real processes (a second `launch.train` refused, a 2-process run refusing a third, a
stale lock taken over, Ctrl-C) are in test_train_loop.py, test_multiprocess.py and
test_faults.py; here the lock's rules, with real process ids.
"""

import dataclasses
import json
import logging
import socket
import subprocess
import sys
import time

import pytest

from mtl import workdir_files, workdir_lock
from mtl.errors import WorkdirBusyError, WorkdirFileError


def _plant(workdir, **fields) -> workdir_lock.Holder:
    """A lock file as another run would have written it."""
    now = time.time()
    holder = workdir_lock.Holder(
        **{
            "host": socket.gethostname(),
            "pid": 1,
            "started": now - 60,
            "heartbeat": now,
            "token": "other",
            **fields,
        }
    )
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / workdir_lock.LOCK_FILE).write_text(json.dumps(dataclasses.asdict(holder)))
    return holder


@pytest.fixture
def live_process():
    """A real process on this host, alive for the test."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield proc.pid
    proc.kill()
    proc.wait()


@pytest.fixture
def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_run_holds_the_lock_and_leaves_nothing_behind(tmp_path):
    workdir = tmp_path / "run"
    with workdir_lock.hold(str(workdir)):
        holder = workdir_lock.read_holder(workdir / workdir_lock.LOCK_FILE)
        assert holder.pid == __import__("os").getpid()
        with workdir_lock.hold(str(workdir)):  # re-entrant: the launcher, then the loop
            pass
        assert (workdir / workdir_lock.LOCK_FILE).exists()  # the outer hold still has it
        (workdir / "metrics.jsonl").write_text("{}\n")
    assert list(workdir.iterdir()) == [workdir / "metrics.jsonl"]
    # A run refused before writing anything does not leave the folder it created.
    with pytest.raises(RuntimeError), workdir_lock.hold(str(tmp_path / "new")):
        raise RuntimeError("bad config")
    assert not (tmp_path / "new").exists()


def test_a_live_holder_refuses_the_second_run_and_its_lock_is_untouched(tmp_path, live_process):
    holder = _plant(tmp_path, pid=live_process)
    before = (tmp_path / workdir_lock.LOCK_FILE).read_text()
    with pytest.raises(WorkdirBusyError) as error, workdir_lock.hold(str(tmp_path)):
        pass
    message = str(error.value)
    assert (
        f"{tmp_path} is in use by another run: process {live_process} on {holder.host}" in message
    )
    assert "running since" in message and f"kill -TERM {live_process}" in message
    assert (tmp_path / workdir_lock.LOCK_FILE).read_text() == before


@pytest.mark.parametrize("how", ["process gone", "old heartbeat", "damaged"])
def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path, dead_pid, live_process, how, caplog):
    if how == "process gone":
        _plant(tmp_path, pid=dead_pid)
        reason = f"its process {dead_pid} is gone"
    elif how == "old heartbeat":  # another host: only the heartbeat tells
        _plant(tmp_path, host="elsewhere", pid=live_process, heartbeat=time.time() - 3600)
        reason = "its last heartbeat was 3600 s ago"
    else:
        (tmp_path / workdir_lock.LOCK_FILE).write_text('{"host": "a", "pi')
        reason = "the lock file is damaged"
    with caplog.at_level(logging.WARNING), workdir_lock.hold(str(tmp_path)):
        assert workdir_lock.read_holder(tmp_path / workdir_lock.LOCK_FILE).token != "other"
    assert f"Taking over the lock on {tmp_path}" in caplog.text and reason in caplog.text
    assert not (tmp_path / workdir_lock.LOCK_FILE).exists()
    assert not [p for p in tmp_path.iterdir() if "stale" in p.name]


def test_the_heartbeat_keeps_the_lock_fresh(tmp_path, monkeypatch):
    monkeypatch.setattr(workdir_lock, "HEARTBEAT_SECONDS", 0.05)
    with workdir_lock.hold(str(tmp_path)):
        first = workdir_lock.read_holder(tmp_path / workdir_lock.LOCK_FILE).heartbeat
        time.sleep(0.5)
        later = workdir_lock.read_holder(tmp_path / workdir_lock.LOCK_FILE).heartbeat
    assert later > first


def test_damaged_json_files_name_the_file_the_problem_and_the_fix(tmp_path):
    path = tmp_path / "config.json"
    workdir_files.write_json(path, {"model": {"trunk": "conv4"}, "seed": 0})
    assert workdir_files.read_json(path, fix="-") == {"model": {"trunk": "conv4"}, "seed": 0}
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # no temporary file left
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(WorkdirFileError) as error:
        workdir_files.read_json(path, fix="Do X.")
    assert str(error.value).startswith(f"{path} is damaged or truncated (it ends in the middle")
    assert str(error.value).endswith("Do X. Nothing was deleted.")
    assert path.read_text() == text[: len(text) // 2]

    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 1}\n{"step": 2}\n')
    assert workdir_files.check_jsonl(metrics, fix="-") == 2
    metrics.write_text('{"step": 1}\n{"step": 2, "lo')
    with pytest.raises(WorkdirFileError, match=r"\(line 2 is cut off: it has no newline\)"):
        workdir_files.check_jsonl(metrics, fix="-")
    metrics.write_text('{"step": 1}\n{"st\n{"step": 3}\n')
    with pytest.raises(WorkdirFileError, match=r"\(line 2: it ends in the middle of a value"):
        workdir_files.check_jsonl(metrics, fix="-")
