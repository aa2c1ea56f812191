from chronoshard.devcluster.nodeagent.podstatus import (
    ContainerView,
    container_status,
    init_phase,
    pod_phase,
    pod_status,
)

T0, T1 = "2026-11-22T00:00:00Z", "2026-11-22T00:01:00Z"


def running(name="c", ready=True):
    return ContainerView(name=name, image="i", running_since=T0, waiting_reason=None, ready=ready, started=True)


def test_phase_rules():
    assert pod_phase([ContainerView("a", "i")], "Always") == "Pending"
    assert pod_phase([running(), ContainerView("b", "i")], "Always") == "Pending"
    assert pod_phase([running()], "Never") == "Running"
    done = ContainerView("a", "i", terminated={"exitCode": 0}, waiting_reason=None)
    failed = ContainerView("b", "i", terminated={"exitCode": 3}, waiting_reason=None)
    assert pod_phase([done], "Never") == "Succeeded"
    assert pod_phase([done, failed], "Never") == "Failed"
    assert pod_phase([failed], "OnFailure") == "Running"
    backing_off = ContainerView("a", "i", waiting_reason="CrashLoopBackOff", last_terminated={"exitCode": 1})
    assert pod_phase([backing_off], "Always") == "Running"


def test_ready_conditions_and_transition_times():
    status = pod_status([running(ready=False)], "Always", "127.0.0.2", "127.0.0.1", T0, {}, T0)
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["Ready"]["status"] == "False" and conds["Ready"]["reason"] == "ContainersNotReady"
    assert conds["PodScheduled"]["status"] == "True"
    later = pod_status([running(ready=True)], "Always", "127.0.0.2", "127.0.0.1", T0, conds, T1)
    conds2 = {c["type"]: c for c in later["conditions"]}
    assert conds2["Ready"] == {"type": "Ready", "status": "True", "lastProbeTime": None, "lastTransitionTime": T1,
                               "reason": None, "message": None}
    assert conds2["PodScheduled"]["lastTransitionTime"] == T0, "unchanged conditions keep their time"
    assert later["podIP"] == "127.0.0.2" and later["podIPs"] == [{"ip": "127.0.0.2"}]
    assert later["hostIP"] == "127.0.0.1" and later["phase"] == "Running"


def test_container_status_shapes():
    view = ContainerView("node", "img", restart_count=2, running_since=T1, waiting_reason=None,
                         last_terminated={"exitCode": 137, "reason": "Error"}, ready=True, started=True,
                         container_id="process://42")
    assert container_status(view) == {
        "name": "node", "image": "img", "imageID": "", "ready": True, "started": True, "restartCount": 2,
        "state": {"running": {"startedAt": T1}}, "lastState": {"terminated": {"exitCode": 137, "reason": "Error"}},
        "containerID": "process://42",
    }
    waiting = container_status(ContainerView("c", "i", waiting_reason="CrashLoopBackOff", waiting_message="back-off"))
    assert waiting["state"] == {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}}
    assert waiting["lastState"] == {}


def test_init_containers_gate_phase_and_initialized():
    done = ContainerView("a", "i", terminated={"exitCode": 0}, waiting_reason=None)
    running_init = ContainerView("b", "i", running_since=T0, waiting_reason=None)
    failed_init = ContainerView("b", "i", terminated={"exitCode": 2}, waiting_reason=None)
    app = ContainerView("web", "i", waiting_reason="PodInitializing")

    status = pod_status([app], "Always", "127.0.0.2", "127.0.0.1", T0, {}, T0, [done, running_init])
    conds = {c["type"]: c for c in status["conditions"]}
    assert status["phase"] == "Pending"
    assert conds["Initialized"]["status"] == "False" and conds["Initialized"]["message"].endswith("[b]")
    assert [s["name"] for s in status["initContainerStatuses"]] == ["a", "b"]

    assert init_phase([done, failed_init], "Never") == "Failed"
    assert init_phase([done, failed_init], "OnFailure") == "Pending"
    assert init_phase([done], "Never") is None

    ready = pod_status([running()], "Always", "127.0.0.2", "127.0.0.1", T0, conds, T1, [done])
    conds = {c["type"]: c for c in ready["conditions"]}
    assert ready["phase"] == "Running" and conds["Initialized"]["status"] == "True"
    assert conds["Initialized"]["reason"] is None, "a stale reason is cleared"
    assert "initContainerStatuses" not in pod_status([running()], "Always", "i", "h", T0, {}, T0)
