import json
import os
import subprocess
import sys

from chronoshard.devcluster import cli

from tests.support.waiting import wait_for


def test_commands_on_a_state_dir_without_a_cluster_fail_clearly(tmp_path, capsys):
    state = str(tmp_path / "none")
    assert cli.main(["--state-dir", state, "kubeconfig"]) == 1
    assert "no local cluster is running" in capsys.readouterr().err
    assert cli.main(["--state-dir", state, "logs", "p"]) == 1
    assert cli.main(["--state-dir", state, "status"]) == 1
    assert "stopped" in capsys.readouterr().out
    assert cli.main(["--state-dir", state, "down"]) == 0  # nothing to stop is not an error
    assert "stopped 0 processes" in capsys.readouterr().err


def test_a_reused_pid_is_not_mistaken_for_ours(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        entry = cli._record(proc.pid)
        assert cli._alive(entry)
        assert not cli._alive({**entry, "start_time": entry["start_time"] - 1})
        state = tmp_path / "s"
        state.mkdir()
        (state / "dev.json").write_text(json.dumps({"processes": {"operator": entry}}))
        assert proc.pid in cli.all_pids(state)
    finally:
        proc.kill()
        proc.wait()
    assert not cli._alive(entry)
    assert cli.all_pids(state) == {}


def test_down_stops_recorded_processes_and_their_children(tmp_path, capsys):
    code = ("import subprocess, sys, time; "
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    state = tmp_path / "s"
    state.mkdir()
    entry = cli._record(parent.pid)
    (state / "dev.json").write_text(json.dumps({"processes": {"operator": entry}}))
    family = wait_for(lambda: len(pids := cli.all_pids(state)) >= 2 and pids, timeout=10,
                      what="the recorded process and its child")
    assert len(family) == 2
    assert cli.main(["--state-dir", str(state), "down"]) == 0
    parent.wait(5)
    assert all(cli.proc_start_time(pid) != start for pid, start in family.items())
    assert "stopped 2 processes; none left running" in capsys.readouterr().err
    assert not (state / "dev.json").exists()
    assert os.path.isdir(state)
