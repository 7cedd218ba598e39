"""Users and departments: accounts, password hashing, incremental lists, injection."""

from __future__ import annotations

import hashlib

import pytest

from imreactor.storage import ConflictError, Storage

from .helpers import PASSWORD, FakeClock, add_users, raw_query


def md5_hex(plain: str) -> str:
    return hashlib.md5(plain.encode()).hexdigest()


def test_add_user_round_trips_every_field(store: Storage, clock: FakeClock) -> None:
    user = store.add_user(
        "alice",
        md5_hex("secret"),
        nick="Alice",
        real_name="Alice Liddell",
        gender=2,
        avatar_url="http://a/1.png",
        department_id=7,
        email="a@example.org",
        phone="123",
        domain="alice",
        sign_info="hi",
        status=1,
    )
    assert user.user_id > 0
    assert (user.created, user.updated) == (clock.now, clock.now)
    assert store.get_users([user.user_id]) == [user]
    assert store.user_by_name("alice") == user
    assert store.user_by_name("nobody") is None


def test_domain_defaults_to_the_login_name(store: Storage) -> None:
    # Clients show user_domain as the account name; UserInfo has no other field for it.
    assert store.add_user("bob", md5_hex("pw")).domain == "bob"
    assert store.add_user("carol", md5_hex("pw"), domain="c.l").domain == "c.l"


def test_get_users_skips_unknown_ids_and_sorts(store: Storage) -> None:
    a, _, c = add_users(store, "a", "b", "c")
    got = store.get_users([c, 999_999, a, c])
    assert [u.user_id for u in got] == [a, c]
    assert store.get_users([]) == []
    assert [u.name for u in store.list_users()] == ["a", "b", "c"]


def test_duplicate_name_is_a_conflict(store: Storage) -> None:
    add_users(store, "bob")
    with pytest.raises(ConflictError):
        store.add_user("bob", PASSWORD)


def test_stored_password_is_a_salted_hash_not_the_md5(store: Storage, storage_url: str) -> None:
    digest = md5_hex("hunter2")
    store.add_user("u1", digest)
    store.add_user("u2", digest)
    rows = raw_query(storage_url, "SELECT password_hash FROM users ORDER BY user_id")
    hashes = [r[0] for r in rows]
    for h in hashes:
        assert digest not in h
        assert digest.upper() not in h
        assert h.startswith("scrypt$")
    assert hashes[0] != hashes[1], "same password, same hash: the salt is missing"


def test_validate_accepts_only_the_right_password(store: Storage) -> None:
    digest = md5_hex("right")
    user = store.add_user("carol", digest, nick="C")
    assert store.validate_user("carol", digest) == user
    assert store.validate_user("carol", digest.upper()) == user
    assert store.validate_user("carol", md5_hex("wrong")) is None
    assert store.validate_user("carol", "right") is None  # plaintext is not the md5
    assert store.validate_user("carol", "") is None
    assert store.validate_user("nobody", digest) is None


def test_add_user_refuses_a_password_that_is_not_an_md5(store: Storage) -> None:
    with pytest.raises(ValueError):
        store.add_user("dave", "plaintext")
    assert store.user_by_name("dave") is None


def test_change_password(store: Storage) -> None:
    (uid,) = add_users(store, "erin")
    assert store.change_password(uid, md5_hex("new"))
    assert store.validate_user("erin", PASSWORD) is None
    assert store.validate_user("erin", md5_hex("new")) is not None
    assert not store.change_password(999_999, md5_hex("new"))


def test_a_disabled_account_refuses_every_login(store: Storage) -> None:
    (uid,) = add_users(store, "frank")
    before = store.user_by_name("frank")
    assert store.set_disabled(uid, True)
    assert store.validate_user("frank", PASSWORD) is None
    assert store.user_by_name("frank") == before  # the account itself is untouched
    assert store.set_disabled(uid, False)
    assert store.validate_user("frank", PASSWORD) == before
    assert not store.set_disabled(999_999, True)


def test_login_record_is_the_user_its_stored_hash_and_flag(
    store: Storage, storage_url: str
) -> None:
    (uid,) = add_users(store, "gina")
    record = store.login_record("gina")
    assert record is not None
    assert record.user == store.user_by_name("gina")
    assert not record.disabled
    [(stored,)] = raw_query(storage_url, f"SELECT password_hash FROM users WHERE user_id = {uid}")
    assert record.password_hash == stored
    assert store.check_password(PASSWORD, record.password_hash)
    assert not store.check_password(md5_hex("wrong"), record.password_hash)
    assert not store.check_password(PASSWORD, None)
    # A new password is a new stored hash (new salt), even when it is the same password.
    store.change_password(uid, PASSWORD)
    again = store.login_record("gina")
    assert again is not None and again.password_hash != record.password_hash
    store.set_disabled(uid, True)
    disabled = store.login_record("gina")
    assert disabled is not None and disabled.disabled
    assert store.login_record("nobody") is None


def test_users_updated_since_is_incremental(store: Storage, clock: FakeClock) -> None:
    a, b = add_users(store, "a", "b")
    t1 = clock.advance(10)
    assert store.users_updated_since(t1) == []
    assert store.change_sign_info(b, "busy")
    assert store.change_avatar(a, "http://x/a.png") is True
    changed = store.users_updated_since(t1)
    assert [(u.user_id, u.updated) for u in changed] == [(a, t1), (b, t1)]
    assert changed[1].sign_info == "busy"
    assert changed[0].avatar_url == "http://x/a.png"
    # At-or-after: a change in the same second as the last sync is not lost.
    assert len(store.users_updated_since(t1)) == 2
    assert len(store.users_updated_since(0)) == 2
    assert not store.change_sign_info(999_999, "x")


def test_departments(store: Storage, clock: FakeClock) -> None:
    root = store.add_department("HQ", priority=1)
    t1 = clock.advance(5)
    dev = store.add_department("Dev", parent_id=root.dept_id)
    assert dev.parent_id == root.dept_id and dev.created == t1
    assert store.departments_updated_since(0) == [root, dev]
    assert store.departments_updated_since(t1) == [dev]


@pytest.mark.parametrize(
    "name",
    [
        "x'); DROP TABLE users; --",
        "' OR '1'='1",
        'quote"d',
        "percent %s %% ? ?? $1",
        "robert\\'); DELETE FROM users;",
        "名字",
    ],
)
def test_sql_injection_in_a_name_stays_data(store: Storage, name: str) -> None:
    add_users(store, "victim")
    user = store.add_user(name, PASSWORD, nick=name, sign_info=name)
    assert store.user_by_name(name) == user
    assert store.validate_user(name, PASSWORD) == user
    assert store.user_by_name("' OR '1'='1' --") is None
    assert store.change_sign_info(user.user_id, name + "'; --")
    assert [u.name for u in store.list_users()] == ["victim", name]
    group = store.create_group(user.user_id, name, avatar=name)
    assert store.group_infos([group.group_id], user.user_id)[0].name == name
