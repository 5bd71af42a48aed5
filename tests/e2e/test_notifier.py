"""The Telegram notifier against a fake Bot API on loopback: live progress of a real CLI turn's tool use, alerts,
and a Telegram that is slow, failing or rate-limiting never touching the requests."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from maxproxy.bench.upstream import FakeUpstream, Reply, ToolUse, plan_limit

from tests.conftest import Proxy, ProxyFactory, fake_cli, wait_for
from tests.fakes.telegram import TOKEN, FakeTelegram

HELLO: Any = [{"role": "user", "content": "say hi with bash"}]


async def notifying(start_proxy: ProxyFactory, telegram: FakeTelegram, **overrides: Any) -> Proxy:
    return await start_proxy(
        telegram_bot_token=TOKEN,
        telegram_notify_ids=["42"],
        telegram_api_base=telegram.url,
        cli_tools="Bash",
        **overrides,
    )


def bash_turn(upstream: FakeUpstream, command: str = "echo hello") -> None:
    upstream.push(
        Reply(blocks=(ToolUse("Bash", {"command": command, "description": "Say hello"}),), stop_reason="tool_use"),
        Reply.text("It said hello."),
    )


async def test_a_tool_turn_gets_one_message_and_its_edits(
    cli_env: Path, start_proxy: ProxyFactory, upstream: FakeUpstream, telegram: FakeTelegram
) -> None:
    proxy = await notifying(start_proxy, telegram)
    await wait_for(lambda: any("started" in t for t in telegram.texts("sendMessage")))
    bash_turn(upstream, "echo hello && echo TOKEN=sk-abcdefghijklmnop")
    answer = await proxy.openai.chat.completions.create(model="claude-sonnet-4", messages=HELLO)
    assert answer.choices[0].message.content == "It said hello."
    await wait_for(lambda: any("Done in" in t for t in telegram.texts()), timeout=10)

    progress = [c for c in telegram.calls if "🔧" in c.params.get("text", "")]
    first, *edits = progress
    assert first.method == "sendMessage"
    assert first.params["chat_id"] == "42"
    assert edits
    assert all(c.method == "editMessageText" for c in edits)
    assert {c.params["message_id"] for c in edits} == {100 + len(telegram.texts("sendMessage")) - 1}
    final = edits[-1].params["text"]
    assert final.startswith("🔧 local · claude-sonnet-4")
    assert "✓ Bash: echo hello && echo …" in final  # the command, cut to a line, its secret masked
    assert "sk-abcdef" not in "".join(c.params["text"] for c in progress)
    assert "Done in" in final
    # Edits of one message are at least a second apart (coalesced).
    times = [c.at for c in progress]
    assert all(later - earlier >= 0.9 for earlier, later in itertools.pairwise(times))


async def test_a_hanging_telegram_never_holds_a_request(
    cli_env: Path, start_proxy: ProxyFactory, upstream: FakeUpstream, telegram: FakeTelegram
) -> None:
    telegram.hang = True
    proxy = await notifying(start_proxy, telegram)
    bash_turn(upstream)
    answer = await proxy.openai.chat.completions.create(model="claude-sonnet-4", messages=HELLO)
    assert answer.choices[0].message.content == "It said hello."
    assert telegram.hanging >= 1  # the notifier is still stuck on its first call while the answer is done


async def test_a_failing_telegram_never_fails_a_request(
    cli_env: Path, start_proxy: ProxyFactory, upstream: FakeUpstream, telegram: FakeTelegram
) -> None:
    telegram.faults.extend([(500, 0)] * 10)
    proxy = await notifying(start_proxy, telegram)
    bash_turn(upstream)
    answer = await proxy.openai.chat.completions.create(model="claude-sonnet-4", messages=HELLO)
    assert answer.choices[0].message.content == "It said hello."
    await wait_for(lambda: len(telegram.calls) >= 2)


async def test_retry_after_is_honoured(cli_env: Path, start_proxy: ProxyFactory, telegram: FakeTelegram) -> None:
    telegram.faults.append((429, 1))
    await notifying(start_proxy, telegram)
    await wait_for(lambda: len(telegram.calls) >= 2)
    refused, retried = telegram.calls[:2]
    assert refused.params == retried.params
    assert retried.at - refused.at >= 1.0


async def test_a_watchdog_timeout_is_an_alert(
    cli_env: Path, start_proxy: ProxyFactory, upstream: FakeUpstream, telegram: FakeTelegram
) -> None:
    proxy = await notifying(start_proxy, telegram, inactivity_timeout=2.0)
    upstream.push(Reply(hang_before_headers=True))
    body = {"model": "claude-sonnet-4", "messages": HELLO}
    async with proxy.http.post(f"{proxy.url}/v1/chat/completions", json=body) as response:
        assert response.status == 504
    await wait_for(lambda: any("silent for 2s" in t for t in telegram.texts("sendMessage")), timeout=10)
    [alert] = [t for t in telegram.texts("sendMessage") if "silent" in t]
    assert alert.startswith("⚠️ maxproxy: local · claude-sonnet-4:")


async def test_nothing_is_sent_when_not_configured(
    cli_env: Path, start_proxy: ProxyFactory, upstream: FakeUpstream, telegram: FakeTelegram
) -> None:
    proxy = await start_proxy(cli_tools="Bash", telegram_api_base=telegram.url)
    bash_turn(upstream)
    answer = await proxy.openai.chat.completions.create(model="claude-sonnet-4", messages=HELLO)
    assert answer.choices[0].message.content == "It said hello."
    await proxy.server.close()
    assert telegram.calls == []


async def test_the_breaker_opening_is_an_alert(
    cli_env: Path, start_proxy: ProxyFactory, upstream: FakeUpstream, telegram: FakeTelegram
) -> None:
    proxy = await notifying(start_proxy, telegram)
    upstream.push(Reply.error(429, "rate limited", headers=plan_limit(600)))
    body = {"model": "claude-sonnet-4", "messages": HELLO}
    async with proxy.http.post(f"{proxy.url}/v1/chat/completions", json=body) as response:
        assert response.status == 429
    await wait_for(lambda: any("breaker opened" in t for t in telegram.texts("sendMessage")), timeout=10)


async def test_workers_that_keep_failing_to_start_are_an_alert(
    tmp_path: Path, start_proxy: ProxyFactory, telegram: FakeTelegram
) -> None:
    await notifying(start_proxy, telegram, claude_path=fake_cli(tmp_path, "startup_fail"))
    await wait_for(lambda: any("keep failing to start" in t for t in telegram.texts("sendMessage")), timeout=30)
