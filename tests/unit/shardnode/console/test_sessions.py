"""The console's session store: random ids, expiry, the bound, sign-out, the CSRF comparison."""

from __future__ import annotations

import pytest
from chronoshard.shardnode.console.sessions import SessionStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_is_found_by_its_id_until_it_expires():
    clock = Clock()
    store = SessionStore(ttl=60, clock=clock)
    sid, session = store.create("alice", ("g",), "tok-a")
    assert store.get(sid) is session and session.user == "alice" and session.groups == ("g",)
    clock.now += 59.9
    assert store.get(sid) is session
    clock.now += 0.2
    assert store.get(sid) is None and len(store) == 0


def test_ids_and_csrf_tokens_are_random_and_unrelated_to_the_token():
    store = SessionStore()
    made = [store.create("u", (), "same-token") for _ in range(50)]
    sids = {sid for sid, _ in made}
    csrfs = {s.csrf for _, s in made}
    assert len(sids) == 50 and len(csrfs) == 50 and not sids & csrfs
    assert all(len(sid) >= 43 and "same-token" not in sid for sid in sids)  # 32 bytes, base64url


def test_the_store_is_bounded_and_drops_the_least_recently_used():
    store = SessionStore(size=3)
    ids = [store.create(f"u{i}", (), f"t{i}")[0] for i in range(3)]
    assert store.get(ids[0]) is not None  # used: now the most recent
    newest, _ = store.create("u3", (), "t3")
    assert len(store) == 3
    assert store.get(ids[1]) is None
    assert all(store.get(s) is not None for s in (ids[0], ids[2], newest))


def test_sign_out_forgets_the_session():
    store = SessionStore()
    sid, _ = store.create("u", (), "t")
    assert store.delete(sid) and store.get(sid) is None and not store.delete(sid) and not store.delete(None)


def test_an_unknown_or_empty_id_has_no_session():
    store = SessionStore()
    store.create("u", (), "t")
    assert store.get("nope") is None and store.get("") is None and store.get(None) is None


def test_csrf_matches_only_the_exact_token():
    _, session = SessionStore().create("u", (), "t")
    assert session.csrf_matches(session.csrf)
    assert not session.csrf_matches(None) and not session.csrf_matches("") and not session.csrf_matches(
        session.csrf[:-1]) and not session.csrf_matches(session.csrf + "x")


def test_the_token_is_not_in_the_repr():
    _, session = SessionStore().create("u", (), "secret-token-value")
    assert "secret-token-value" not in repr(session) and session.csrf not in repr(session)


@pytest.mark.parametrize("kw", [{"size": 0}, {"ttl": 0}])
def test_a_store_without_room_or_lifetime_is_refused(kw):
    with pytest.raises(ValueError):
        SessionStore(**kw)
