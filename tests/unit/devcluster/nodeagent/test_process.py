import os
import signal
import sys

from chronoshard.devcluster.nodeagent.process import ProcessRecord, descendants, launch, proc_start_time

from tests.support.waiting import wait_for


def start(tmp_path, code: str):
    return launch([sys.executable, "-c", code], dict(os.environ), str(tmp_path), tmp_path / "log" / "0.log",
                  tmp_path / "exit.json", restart_count=0, started_at="t")


def test_exit_code_and_logs_are_recorded(tmp_path):
    record, popen = start(tmp_path, "import sys; print('hello out'); print('hello err', file=sys.stderr); sys.exit(3)")
    popen.wait(10)
    assert not record.alive()
    assert record.exit_info()["exitCode"] == 3 and record.exit_info()["reason"] == "Error"
    log = (tmp_path / "log" / "0.log").read_text()
    assert "hello out" in log and "hello err" in log


def test_sigterm_is_forwarded_and_signal_exit_reported(tmp_path):
    record, popen = start(tmp_path, "import time; print('up', flush=True); time.sleep(60)")
    wait_for(lambda: "up" in (tmp_path / "log" / "0.log").read_text(), timeout=10, what="the child's first line")
    record.signal(signal.SIGTERM)
    popen.wait(10)
    assert record.exit_info() == {**record.exit_info(), "exitCode": 128 + signal.SIGTERM, "signal": signal.SIGTERM}


def test_kill_group_kills_container_and_its_children(tmp_path):
    code = (
        "import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"
    )
    record, popen = start(tmp_path, code)
    wait_for(lambda: len(descendants(record.pid)) >= 2, timeout=10, what="the grandchild")
    family = descendants(record.pid)
    record.kill_group()
    popen.wait(10)
    wait_for(lambda: all(proc_start_time(p) is None for p in family), timeout=10, what="the whole group gone")


def test_record_survives_reload_and_detects_pid_reuse(tmp_path):
    record, popen = start(tmp_path, "import time; time.sleep(60)")
    record.save(tmp_path / "rec.json")
    loaded = ProcessRecord.load(tmp_path / "rec.json")
    assert loaded == record and loaded.alive()
    impostor = ProcessRecord(**{**record.__dict__, "start_time": record.start_time + 1})
    assert not impostor.alive(), "same PID with another start time is another process"
    record.kill_group()
    popen.wait(10)
    assert not loaded.alive()


def test_missing_command_is_a_start_error(tmp_path):
    record, popen = launch(["no-such-command-xyz"], dict(os.environ), str(tmp_path), tmp_path / "l.log",
                           tmp_path / "exit.json", 0, "t")
    popen.wait(10)
    info = record.exit_info()
    assert info["exitCode"] == 128 and info["reason"] == "StartError"
