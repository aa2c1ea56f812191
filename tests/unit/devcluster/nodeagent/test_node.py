import os

from chronoshard.devcluster.nodeagent.node import PROCESS_NODE_LABEL, node_labels, node_status


def test_node_status_is_ready_with_capacity_and_stable_transition_times():
    status = node_status("127.0.0.1", "n", 110, kubelet_port=10250, since="2026-11-22T00:00:00Z")
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["Ready"]["status"] == "True"
    assert all(c["lastTransitionTime"] == "2026-11-22T00:00:00Z" for c in conds.values())
    assert all(c["status"] == "False" for t, c in conds.items() if t != "Ready")
    assert status["capacity"]["cpu"] == str(os.cpu_count())
    assert status["capacity"]["pods"] == "110" and status["allocatable"] == status["capacity"]
    assert status["addresses"] == [{"type": "InternalIP", "address": "127.0.0.1"}]
    assert status["daemonEndpoints"]["kubeletEndpoint"]["Port"] == 10250


def test_node_labels_select_the_process_node():
    labels = node_labels("chronoshard-dev")
    assert labels["kubernetes.io/hostname"] == "chronoshard-dev" and labels[PROCESS_NODE_LABEL] == "true"
    assert labels["kubernetes.io/os"] == "linux"
