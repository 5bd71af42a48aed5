"""The control requests a warm worker sends around its turns (the CLI work maxproxy adds to a bare warm CLI): each
kind of turn sends exactly the ones its change needs — none for a plain turn on a clean worker or the next turn of a
held conversation, a rewind per prompt to reclaim a held worker, a settings update only when the output limit
changes, a tool listing only when the tools change — and with debug logging each is logged (`cli_control`) with its
round trip and the CLI's CPU meanwhile, while at info level nothing is timed or logged."""

from __future__ import annotations

import collections
import logging
from typing import Any

import pytest
import structlog
from maxproxy.bench.upstream import FakeUpstream, Reply
from maxproxy.pool import Pool
from maxproxy.state import POOL

from tests.conftest import Proxy, ProxyFactory, wait_for
from tests.e2e import CHAT, quiet
from tests.e2e.test_tools import WEATHER

MODEL = "claude-sonnet-4"


def pool_of(proxy: Proxy) -> Pool:
    return proxy.app[POOL]


async def test_each_turn_sends_only_the_control_requests_its_change_needs(
    cli_env: object, start_proxy: ProxyFactory, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = await start_proxy(max_workers=1, min_idle=1)
    pool = pool_of(proxy)
    await wait_for(lambda: pool.idle == 1 and quiet(pool))
    cpu: list[float] = []

    async def turn(messages: list[dict[str, Any]], **extra: Any) -> tuple[collections.Counter[str], str]:
        """One request; the control requests its worker sent for it (taking it back included), and its answer."""
        with structlog.testing.capture_logs() as logs:
            body = {"model": MODEL, "messages": messages, **extra}
            async with proxy.http.post(proxy.url + CHAT, json=body) as response:
                assert response.status == 200, await response.text()
                answer = (await response.json())["choices"][0]["message"]["content"]
            await wait_for(lambda: quiet(pool))
        sent = [log for log in logs if log["event"] == "cli_control"]
        for log in sent:
            assert log["log_level"] == "debug"
            assert min(log["ms"], log["cli_cpu_ms"]) >= 0, log
            cpu.append(log["cli_cpu_ms"])
        return collections.Counter(log["subtype"] for log in sent), answer

    def user(text: str) -> dict[str, Any]:
        return {"role": "user", "content": text}

    # At info level nothing is timed or logged; with debug logging every control request is.
    assert await turn([user("plain, first on a clean worker")]) == (collections.Counter(), "Hello from fake upstream!")
    caplog.set_level(logging.DEBUG, logger="maxproxy.worker")
    sent, _ = await turn([user("plain, a new conversation")])
    assert sent == {"rewind_conversation": 1}  # the held worker is reclaimed: one rewind per prompt, nothing else
    sent, answer = await turn([user("plain, a new conversation")])
    assert sent == {"rewind_conversation": 1}
    history = [user("plain, a new conversation"), {"role": "assistant", "content": answer}, user("and then?")]
    sent, _ = await turn(history)
    assert sent == {}  # the held conversation goes on: no request around its turn
    sent, _ = await turn([user("with an output limit")], max_tokens=100)
    assert sent == {"rewind_conversation": 2, "apply_flag_settings": 1}
    sent, _ = await turn([user("the same output limit")], max_tokens=100)
    assert sent == {"rewind_conversation": 1}  # unchanged options are not sent again
    sent, _ = await turn([user("tools, answered in text")], tools=[WEATHER])
    assert sent == {
        "rewind_conversation": 1,
        "apply_flag_settings": 1,
        "mcp_message:notifications/tools/list_changed": 1,
    }
    sent, _ = await turn([user("the same tools")], tools=[WEATHER])
    assert sent == {"rewind_conversation": 1}  # an unchanged listing is not sent again
    # Dropping a tool the CLI has sent upstream takes a new server (and, once per 16 names, its permission rules).
    sent, _ = await turn([user("no tools again")])
    assert sent == {"rewind_conversation": 1, "apply_flag_settings": 1, "mcp_set_servers": 1}
    assert sum(cpu) > 0  # the CLI's CPU is read from /proc around each request
    listed = [{t["name"] for t in r.body.get("tools", [])} for r in upstream.messages_requests]
    assert listed[-3:] == [{"get_weather"}, {"get_weather"}, set()]


async def test_an_interrupt_is_counted_and_timed_when_its_answer_comes(
    cli_env: object, start_proxy: ProxyFactory, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = await start_proxy(max_workers=1, min_idle=1)
    pool = pool_of(proxy)
    await wait_for(lambda: pool.idle == 1 and quiet(pool))
    caplog.set_level(logging.DEBUG, logger="maxproxy.worker")
    upstream.push(Reply.text(" ".join(f"tok{i}" for i in range(200)), pieces=200, delay=0.02))
    body = {"model": MODEL, "messages": [{"role": "user", "content": "a long answer"}], "stream": True}
    with structlog.testing.capture_logs() as logs:
        async with proxy.http.post(proxy.url + CHAT, json=body) as response:
            async for raw in response.content:
                if b'"content":' in raw:
                    response.close()  # the client goes away after its first token
                    break
        await wait_for(lambda: quiet(pool) and pool.idle == 1)
    sent = [log for log in logs if log["event"] == "cli_control"]
    assert collections.Counter(log["subtype"] for log in sent) == {"interrupt": 1, "rewind_conversation": 1}
    [interrupt] = [log for log in sent if log["subtype"] == "interrupt"]
    assert min(interrupt["ms"], interrupt["cli_cpu_ms"]) >= 0


async def test_a_worker_whose_cli_has_the_turns_options_is_lent_first(
    cli_env: object, start_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    """New conversations with two output limits taken in turn: each goes to the worker whose CLI has its limit
    already, idle or held (a held one is reclaimed before the least recently used one), so the settings update is
    sent once, for the first request with the other limit. Lent by recency alone, it was sent three times."""
    proxy = await start_proxy(max_workers=2, min_idle=2)
    pool = pool_of(proxy)
    await wait_for(lambda: pool.idle == 2 and quiet(pool))

    def applied() -> int:
        return sum(h.worker.controls["apply_flag_settings"] for h in pool.workers())

    async def turn(text: str, **extra: Any) -> None:
        body = {"model": MODEL, "messages": [{"role": "user", "content": text}], **extra}
        async with proxy.http.post(proxy.url + CHAT, json=body) as response:
            assert response.status == 200, await response.text()
        await wait_for(lambda: quiet(pool))

    await turn("a", max_tokens=1024)  # one worker gets the lower limit
    await turn("b")  # the other, idle, keeps the default
    assert applied() == 1
    await turn("c")  # both hold a conversation: the one with the default limit is emptied, though used last
    await turn("d", max_tokens=1024)  # and for this one, the one with 1024
    assert applied() == 1
    assert pool.counts["spawned"] == 2  # the same two processes throughout
    assert sorted(h.conversation is not None for h in pool.workers()) == [True, True]
