"""API keys: the keys file parsed into `Key`s, its mistakes refused with a message saying which, `api_keys` as admin
keys, authentication by digest, reloads that keep the keys in force when the new file is broken."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest
from maxproxy import keys
from maxproxy.keys import Key, Keyring, KeysError, read

from tests.conftest import make_settings, wait_for

MODELS = {"claude-sonnet-4", "claude-opus-4", "haiku"}
SHA = hashlib.sha256(b"hashed-secret").hexdigest()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "keys.toml"
    path.write_text(text)
    return path


def ring(tmp_path: Path, text: str, **overrides: object) -> Keyring:
    return Keyring(make_settings(tmp_path, keys_file=str(write(tmp_path, text)), **overrides))


def test_a_keys_file_parses_into_keys(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[keys.bot-1]\nkey = "secret-one"\nmodels = ["claude-sonnet-4", "haiku"]\nmax_concurrent = 2\nrpm = 30\n'
        "daily_tokens = 1000\nweekly_tokens = 5000\n"
        f'[keys.ops]\nkey_sha256 = "{SHA.upper()}"\nadmin = true\n',
    )
    bot, ops = read(path, MODELS)
    assert bot == Key(
        name="bot-1",
        digest=hashlib.sha256(b"secret-one").hexdigest(),
        models=frozenset({"claude-sonnet-4", "haiku"}),
        max_concurrent=2,
        rpm=30,
        daily_tokens=1000,
        weekly_tokens=5000,
    )
    assert ops == Key(name="ops", digest=SHA, admin=True)  # the digest is kept lower-case, no limits, every model


def test_an_empty_keys_file_has_no_keys(tmp_path: Path) -> None:
    assert read(write(tmp_path, ""), MODELS) == ()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[keys.a\nkey = 1", "is not valid TOML"),
        ('[keys.a]\nkey = "secret-one"\ncolour = "red"\n', "unknown field `colour`"),
        (f'[keys.a]\nkey = "secret-one"\nkey_sha256 = "{SHA}"\n', "exactly one of `key` and `key_sha256`"),
        ("[keys.a]\nrpm = 3\n", "exactly one of `key` and `key_sha256`"),
        ('[keys.a]\nkey = "short"\n', "shorter than 8 characters"),
        ('[keys.a]\nkey = "   short    "\n', "shorter than 8 characters"),
        ('[keys.a]\nkey_sha256 = "abc123"\n', "not 64 hex digits"),
        (f'[keys.a]\nkey_sha256 = "{SHA[:-1]}g"\n', "not 64 hex digits"),
        ('[keys.a]\nkey = "secret-one"\nmodels = ["gpt-4"]\n', "unknown model 'gpt-4'"),
        ('[keys."bad name"]\nkey = "secret-one"\n', "a key name is 1-64 letters"),
        (f'[keys.{"n" * 65}]\nkey = "secret-one"\n', "a key name is 1-64 letters"),
        ('[keys.a]\nkey = "secret-one"\n[keys.b]\nkey = "secret-one"\n', "two keys have the same secret"),
        (
            f'[keys.a]\nkey = "hashed-secret"\n[keys.b]\nkey_sha256 = "{SHA}"\n',
            "two keys have the same secret",
        ),
        ('[keys.a]\nkey = "secret-one"\nmax_concurrent = 0\n', "max_concurrent"),
        ('[keys.a]\nkey = "secret-one"\nrpm = -1\n', "rpm"),
    ],
)
def test_a_bad_keys_file_is_refused_saying_why(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(KeysError) as caught:
        read(path, MODELS)
    message = str(caught.value)
    assert fragment in message
    assert str(path) in message


def test_a_bad_entry_names_its_table(tmp_path: Path) -> None:
    with pytest.raises(KeysError, match=r"\[keys\.second\]"):
        read(write(tmp_path, '[keys.first]\nkey = "secret-one"\n[keys.second]\nkey = "short"\n'), MODELS)


def test_a_missing_keys_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeysError, match="cannot read keys file"):
        read(tmp_path / "nope.toml", MODELS)


def test_api_keys_become_admin_keys_before_the_file_keys(tmp_path: Path) -> None:
    keyring = ring(tmp_path, '[keys.bot]\nkey = "secret-one"\n', api_keys=["first-key", " second-key "])
    assert [(k.name, k.admin) for k in keyring.keys] == [("api_key_1", True), ("api_key_2", True), ("bot", False)]
    assert keyring.keys[1].digest == hashlib.sha256(b"second-key").hexdigest()  # stripped
    assert keyring.enabled


def test_no_keys_on_loopback_means_keys_are_off(tmp_path: Path) -> None:
    keyring = Keyring(make_settings(tmp_path))
    assert keyring.keys == ()
    assert not keyring.enabled
    assert keyring.authenticate("anything") is None
    assert keyring.reload() is False  # no file to read


def test_authenticate_finds_the_key_by_its_secret(tmp_path: Path) -> None:
    keyring = ring(
        tmp_path,
        f'[keys.a]\nkey = "secret-one"\n[keys.b]\nkey = "secret-two"\n[keys.c]\nkey_sha256 = "{SHA}"\n',
        api_keys=["admin-key"],
    )
    found = {secret: keyring.authenticate(secret) for secret in ("secret-one", "secret-two", "hashed-secret")}
    assert {secret: key.name if key else None for secret, key in found.items()} == {
        "secret-one": "a",
        "secret-two": "b",
        "hashed-secret": "c",
    }
    assert keyring.authenticate("admin-key") == keyring.keys[0]
    assert keyring.authenticate("secret-on") is None
    assert keyring.authenticate("") is None
    assert keyring.authenticate(SHA) is None  # the digest itself is not a secret that works


def test_reload_picks_up_a_changed_file(tmp_path: Path) -> None:
    keyring = ring(tmp_path, '[keys.a]\nkey = "secret-one"\n')
    write(tmp_path, '[keys.b]\nkey = "secret-two"\nrpm = 5\n')
    assert keyring.reload() is True
    assert keyring.authenticate("secret-one") is None
    key = keyring.authenticate("secret-two")
    assert key is not None
    assert (key.name, key.rpm) == ("b", 5)


@pytest.mark.parametrize("broken", ["[keys.a\n", '[keys.a]\nkey = "short"\n'])
def test_reload_keeps_the_old_keys_when_the_new_file_is_broken(tmp_path: Path, broken: str) -> None:
    keyring = ring(tmp_path, '[keys.a]\nkey = "secret-one"\n')
    before = keyring.keys
    write(tmp_path, broken)
    assert keyring.reload() is False
    assert keyring.keys == before
    assert keyring.authenticate("secret-one") is not None


def test_reload_keeps_the_old_keys_when_a_public_bind_would_have_none(tmp_path: Path) -> None:
    keyring = ring(tmp_path, '[keys.a]\nkey = "secret-one"\n', host="0.0.0.0")
    write(tmp_path, "")
    assert keyring.reload() is False
    assert keyring.authenticate("secret-one") is not None


def test_reload_may_empty_the_keys_on_loopback(tmp_path: Path) -> None:
    keyring = ring(tmp_path, '[keys.a]\nkey = "secret-one"\n')
    write(tmp_path, "")
    assert keyring.reload() is True
    assert not keyring.enabled


def test_a_public_bind_with_an_empty_keys_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeysError, match=r"refusing to listen on 0\.0\.0\.0"):
        ring(tmp_path, "", host="0.0.0.0")


def test_a_public_bind_with_api_keys_only_is_allowed(tmp_path: Path) -> None:
    keyring = ring(tmp_path, "", host="0.0.0.0", api_keys=["admin-key"])
    assert [k.name for k in keyring.keys] == ["api_key_1"]


def test_a_bad_file_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(KeysError, match="unknown model"):
        ring(tmp_path, '[keys.a]\nkey = "secret-one"\nmodels = ["nope"]\n')


async def test_watch_reloads_a_changed_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keys, "WATCH_EVERY", 0.01)
    keyring = ring(tmp_path, '[keys.a]\nkey = "secret-one"\n')
    task = asyncio.create_task(keyring.watch())
    try:
        write(tmp_path, '[keys.a]\nkey = "secret-one"\n[keys.b]\nkey = "secret-two"\n')
        await wait_for(lambda: keyring.authenticate("secret-two") is not None, timeout=5)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_change_the_watch_cannot_see_waits_for_a_reload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same size, same modification time: the watch polls past it; SIGHUP's reload reads it."""
    monkeypatch.setattr(keys, "WATCH_EVERY", 0.01)
    keyring = ring(tmp_path, '[keys.a]\nkey = "secret-one"\n')
    polls = 0
    stat = keyring._stat

    def counted() -> tuple[int, int] | None:
        nonlocal polls
        polls += 1
        return stat()

    monkeypatch.setattr(keyring, "_stat", counted)
    task = asyncio.create_task(keyring.watch())
    try:
        path = tmp_path / "keys.toml"
        before = path.stat()
        path.write_text('[keys.a]\nkey = "secret-two"\n')
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        seen = polls
        await wait_for(lambda: polls >= seen + 2)  # at least one whole poll after the change
        assert keyring.authenticate("secret-one") is not None
        assert keyring.reload()  # what SIGHUP does
        assert keyring.authenticate("secret-one") is None
        assert keyring.authenticate("secret-two") is not None
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


# --- bugs ----------------------------------------------------------------------------------------------------------


def test_a_file_key_with_surrounding_spaces_works_like_an_api_key(tmp_path: Path) -> None:
    keyring = ring(tmp_path, '[keys.a]\nkey = " secret-one "\n')
    assert keyring.authenticate("secret-one") is not None


def test_a_file_key_may_not_take_an_api_key_name(tmp_path: Path) -> None:
    with pytest.raises(KeysError):
        ring(tmp_path, '[keys.api_key_1]\nkey = "secret-one"\nrpm = 1\n', api_keys=["admin-key"])


def test_a_file_key_may_not_share_a_secret_with_an_api_key(tmp_path: Path) -> None:
    with pytest.raises(KeysError, match="same secret"):
        ring(tmp_path, '[keys.bot]\nkey = "same-secret"\nrpm = 1\n', api_keys=["same-secret"])


def test_a_key_may_name_a_model_the_cli_lists_but_not_one_nobody_serves(tmp_path: Path) -> None:
    # The keys file is read before the CLI is asked for its model list: its ids and aliases are accepted then.
    [key] = read(write(tmp_path, '[keys.a]\nkey = "secret-one"\nmodels = ["claude-opus-5-5", "fable"]\n'), MODELS)
    assert key.models == frozenset({"claude-opus-5-5", "fable"})
    with pytest.raises(KeysError, match="gpt-4o"):
        read(write(tmp_path, '[keys.a]\nkey = "secret-one"\nmodels = ["gpt-4o"]\n'), MODELS)
