"""The console's small parts that need no cluster: the session store's bounds (a visitor who asks
for the login page again and again cannot fill the console's memory; a signed-in user is never
pushed out by them), and how odd values read (a number typed as "²", a status this console does
not know)."""

from __future__ import annotations

from console import formats
from console.sessions import SessionStore
from csbs.v1 import region_node_pb2 as pb


def test_sessions_not_signed_in_are_bounded_and_the_least_recently_seen_go_first() -> None:
    store = SessionStore(max_signed_out=3)
    signed_in = store.sign_in(store.new(), "csbs_token")
    made = [store.new() for _ in range(3)]
    assert store.get(made[0].session_id) is made[0]  # seen again: now the most recent
    more = [store.new() for _ in range(2)]
    assert len(store) == 4  # three not signed in, and the signed-in one
    assert store.get(signed_in.session_id) is signed_in
    assert [store.get(s.session_id) for s in made[1:]] == [None, None]
    assert all(store.get(s.session_id) is s for s in (made[0], *more))


def test_a_session_not_signed_in_expires_sooner_than_a_signed_in_one() -> None:
    store = SessionStore(idle_seconds=60.0, signed_out_idle_seconds=-1.0)
    user = store.sign_in(SessionStore().new(), "csbs_token")
    visitor = store.new()  # made after: nothing dropped it but its own expiry on get
    assert len(store) == 2
    assert store.get(visitor.session_id) is None
    assert store.get(user.session_id) is user


def test_odd_numbers_and_unknown_statuses_read_as_nothing_or_unknown() -> None:
    assert formats.whole_number("42") == 42
    assert formats.whole_number(" 7 ") == 7
    for odd in ("²", "-1", "1.5", "", "9" * 5000, str(formats.UINT32_MAX + 1)):
        assert formats.whole_number(odd) is None, odd
    assert formats.whole_number(str(formats.UINT32_MAX + 1), formats.UINT64_MAX) is not None
    assert formats.state(pb.BackupStatus, pb.BACKUP_STATUS_AVAILABLE) == "available"
    assert formats.state(pb.BackupStatus, 999) == "unknown"
