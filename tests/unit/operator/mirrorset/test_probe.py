"""The health probe's time budget: the probe interval within bounds, and a node that accepts connections but never
answers (a frozen process) is reported as timed out rather than waited on."""

import asyncio
import socket

from chronoshard.operator.mirrorset import probe
from chronoshard.operator.mirrorset.plan import Member
from chronoshard.operator.podcontract import NODE_PORT


def test_the_probe_timeout_follows_the_probe_interval_within_bounds():
    assert probe.probe_timeout(1.0) == 1.0
    assert probe.probe_timeout(0.1) == probe.PROBE_TIMEOUT_MIN
    assert probe.probe_timeout(10.0) == probe.PROBE_TIMEOUT_MAX


def test_a_node_that_never_answers_times_out():
    # A listening socket nobody accepts from, at a pod-like loopback address: the kernel completes the handshake,
    # no answer ever comes.
    ip = "127.0.0.93"
    with socket.socket() as listener:
        listener.bind((ip, NODE_PORT))
        listener.listen(16)
        pod = {"metadata": {"name": "a-0"}, "spec": {"containers": [{"name": "node", "command": ["chronoshard-node"]}]},
               "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}}
        (sample,) = asyncio.run(probe.sample_member(Member("ns", "a"), {0: pod}, 1, timeout_seconds=0.5))
    assert sample.health is None and sample.replication is None
    assert sample.error == "TimeoutError", sample
