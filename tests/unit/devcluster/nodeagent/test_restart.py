from chronoshard.devcluster.nodeagent.restart import Backoff, should_restart


def test_restart_policies():
    assert should_restart("Always", 0) and should_restart("Always", 1)
    assert should_restart("OnFailure", 2) and not should_restart("OnFailure", 0)
    assert not should_restart("Never", 1) and not should_restart("Never", 0)


def test_backoff_doubles_from_an_immediate_first_restart_and_caps():
    backoff = Backoff(base=10, cap=300)
    delays = [backoff.next_delay(ran_for=1) for _ in range(8)]
    assert delays == [0, 10, 20, 40, 80, 160, 300, 300]


def test_backoff_resets_after_a_long_run():
    backoff = Backoff(base=10, cap=300, reset_after=600)
    for _ in range(4):
        backoff.next_delay(ran_for=1)
    assert backoff.next_delay(ran_for=601) == 0
    assert backoff.next_delay(ran_for=1) == 10
