"""OpenClaw's conversations continue on their CLI worker: the requests of `tests/fixtures/openclaw/` (the shapes
OpenClaw 2026.9 sends: a system prompt, a user message with its timestamp and `Runtime:` line, and its
internal-context user message always last, moved to the end of every later request) replayed through maxproxy and
the real CLI. The fixtures hold `{{call_id}}`, `{{arguments}}`, `{{text}}` and `{{answer}}` where OpenClaw echoes
what the previous answer said; the test puts in what maxproxy answered."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog
from maxproxy.bench.upstream import FakeUpstream, Received, Reply, Text, ToolUse
from maxproxy.claude.worker import Worker
from maxproxy.pool import Pool
from maxproxy.state import POOL

from tests import sse
from tests.conftest import Proxy, ProxyFactory, wait_for
from tests.e2e import CHAT, holding

FIXTURES = Path(__file__).parent.parent / "fixtures" / "openclaw"
# The model's own tool_use id (the upstream's ids are random): the continued turn answers the call under it, while a
# replay can only carry the client's call id.
TOOL_USE = "toolu_01Hq7XzR2mVb9sKcW4dLpT3n"
Log = MutableMapping[str, Any]


def fixture(name: str, **values: str) -> dict[str, Any]:
    """A recorded OpenClaw request, with what it echoes of earlier answers filled in."""

    def fill(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: fill(v) for k, v in node.items()}
        if isinstance(node, list):
            return [fill(v) for v in node]
        if isinstance(node, str) and node.startswith("{{") and node.endswith("}}"):
            return values[node[2:-2]]
        return node

    body: dict[str, Any] = fill(json.loads((FIXTURES / f"{name}.json").read_text()))
    return body


def test_the_fixtures_are_openclaws_shapes() -> None:
    names = {"apply_patch", "edit", "exec", "ls", "process", "read", "sessions_yield", "tool_call", "tool_describe"}
    names |= {"tool_search", "view_image", "write"}
    for name in ("1-first", "2-tool-follow-up", "3-next-turn"):
        body = fixture(name, call_id="call1", arguments="{}", text="", answer="")
        assert {t["function"]["name"] for t in body["tools"]} == names
        assert (body["stream"], body["stream_options"]) == (True, {"include_usage": True})
        assert (body["tool_choice"], body["max_completion_tokens"]) == ("auto", 8192)
        system, user, *_, ctx = body["messages"]
        assert (system["role"], user["role"], ctx["role"]) == ("system", "user", "user")
        assert 2000 < len(system["content"]) < 3000
        assert "Runtime: agent=main | session=agent:" in user["content"]
        [part] = ctx["content"]
        assert part["text"].startswith("<<<BEGIN_OPENCLAW_INTERNAL_CONTEXT>>>")


@pytest.fixture
def access_log() -> Iterator[list[Log]]:
    """The access log lines of the requests served while the test runs."""
    with structlog.testing.capture_logs() as logs:
        yield logs


def pool_of(proxy: Proxy) -> Pool:
    return proxy.app[POOL]


def tool_uses(received: Received) -> list[str]:
    return [b["id"] for m in received.messages for b in m["content"] if isinstance(b, dict) and b["type"] == "tool_use"]


def tool_results(received: Received) -> list[dict[str, Any]]:
    content = [m for m in received.messages if m["role"] == "user"][-1]["content"]
    return [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]


class Answer:
    def __init__(self, headers: Mapping[str, str], stream: sse.Stream) -> None:
        self.session = headers["x-session-id"]
        self.stream = stream
        deltas = [c["choices"][0]["delta"] for c in stream.chunks if c["choices"]]
        calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
        self.call_id = calls[0]["id"] if calls else ""
        self.arguments = "".join(c["function"]["arguments"] for c in calls)
        self.text = stream.text


async def post(proxy: Proxy, body: dict[str, Any], key: str = "not-needed") -> Answer:
    headers = {"Authorization": f"Bearer {key}"}
    async with proxy.http.post(proxy.url + CHAT, json=body, headers=headers) as response:
        assert response.status == 200, await response.text()
        stream = await sse.read(response)
    assert stream.data[-1] == "[DONE]"
    return Answer(response.headers, stream)


async def continued(access_log: list[Log], n: int) -> list[bool]:
    """Whether each of the first `n` chat requests continued its conversation (from the access log)."""

    def lines() -> list[Log]:
        return [x for x in access_log if x.get("event") == "request" and x.get("path") == CHAT]

    await wait_for(lambda: len(lines()) >= n)
    return [bool(x.get("continued")) for x in lines()]


@pytest.fixture
async def openclaw(cli_env: Path, start_proxy: ProxyFactory) -> Proxy:
    return await start_proxy(api_keys=["sk-openclaw", "sk-other"])


async def first_turn(proxy: Proxy, upstream: FakeUpstream, key: str = "sk-openclaw") -> tuple[Answer, Worker]:
    """Request 1 of the recording: the model calls `read`; its turn waits for the result."""
    use = ToolUse("read", {"path": "notes.md"}, id=TOOL_USE)
    upstream.push(Reply(blocks=(Text.of("Reading it."), use), stop_reason="tool_use"))
    answer = await post(proxy, fixture("1-first"), key)
    assert answer.call_id
    assert json.loads(answer.arguments) == {"path": "notes.md"}
    [waiting] = [w for w in holding(pool_of(proxy)) if w.waiting]
    return answer, waiting


def echoed(answer: Answer) -> dict[str, str]:
    """What OpenClaw's next requests repeat of an answer that called a tool."""
    return {"call_id": answer.call_id, "arguments": answer.arguments, "text": answer.text}


def follow_up(answer: Answer, **changes: str) -> dict[str, Any]:
    return fixture("2-tool-follow-up", **{**echoed(answer), **changes})


async def test_openclaws_tool_follow_up_and_next_turn_continue(
    openclaw: Proxy, upstream: FakeUpstream, access_log: list[Log]
) -> None:
    first, worker = await first_turn(openclaw, upstream)

    upstream.push(Reply.text("Milk, and the dentist on Friday."))
    second = await post(openclaw, follow_up(first), "sk-openclaw")
    assert second.text == "Milk, and the dentist on Friday."
    assert second.session == first.session
    # The waiting CLI turn went on: the model got the result under its own tool_use id (a replay carries the
    # client's call id) with OpenClaw's new context message, and nothing was replayed.
    assert len(upstream.messages_requests) == 2
    [result] = tool_results(upstream.messages_requests[1])
    assert result["tool_use_id"] == TOOL_USE
    assert "buy milk" in json.dumps(result["content"])
    assert "09:15" in json.dumps(upstream.messages_requests[1].messages[-1])
    assert worker.lines_written == 2  # the context message and the one result
    assert holding(pool_of(openclaw)) == [worker]

    # The next user turn: OpenClaw's context message moved again, after the new question.
    upstream.push(Reply.text("The dentist."))
    third = await post(openclaw, fixture("3-next-turn", **echoed(first), answer=second.text), "sk-openclaw")
    assert third.text == "The dentist."
    assert third.session == first.session
    assert worker.lines_written == 1  # the new question with its context, as one user line
    assert tool_uses(upstream.messages_requests[2]) == [TOOL_USE]  # the CLI's own history, not a replay
    assert holding(pool_of(openclaw)) == [worker]
    assert await continued(access_log, 3) == [False, True, True]


async def test_a_follow_up_is_known_by_the_calls_it_answers(
    openclaw: Proxy, upstream: FakeUpstream, access_log: list[Log]
) -> None:
    """OpenClaw may rewrite what came before the calls (here its first message loses the `Runtime:` line); answering
    exactly the calls a waiting turn issued still makes it that turn's continuation."""
    first, worker = await first_turn(openclaw, upstream)
    body = follow_up(first)
    body["messages"][1]["content"] = body["messages"][1]["content"].split("\n\nRuntime:")[0]
    upstream.push(Reply.text("Milk."))
    second = await post(openclaw, body, "sk-openclaw")
    assert second.session == first.session
    assert tool_results(upstream.messages_requests[1])[0]["tool_use_id"] == TOOL_USE
    assert worker.lines_written == 2
    assert await continued(access_log, 2) == [False, True]


async def test_other_calls_keys_or_system_prompts_do_not_continue_the_waiting_turn(
    openclaw: Proxy, upstream: FakeUpstream, access_log: list[Log]
) -> None:
    first, worker = await first_turn(openclaw, upstream)
    pool = pool_of(openclaw)
    tries = {
        "an unknown call id": (follow_up(first, call_id="call01Hq7XzR2mVb9sKcW4dLpT3m"), "sk-openclaw"),
        "another key": (follow_up(first), "sk-other"),
        "another system prompt": (follow_up(first), "sk-openclaw"),
    }
    tries["another system prompt"][0]["messages"][0]["content"] += "\nBe terse."
    for what, (body, key) in tries.items():
        upstream.push(Reply.text(f"Replayed: {what}."))
        answer = await post(openclaw, body, key)
        assert answer.text == f"Replayed: {what}.", what
        assert answer.session != first.session, what
        # Replayed into a clean worker: the call as a block under the client's id, answered there.
        [result] = tool_results(upstream.messages_requests[-1])
        assert result["tool_use_id"] == body["messages"][3]["tool_call_id"] != TOOL_USE, what
        assert worker.waiting, what  # the turn that waits is untouched
        await wait_for(lambda: pool.busy == 0)

    # Its own client still goes on with it.
    upstream.push(Reply.text("Milk."))
    last = await post(openclaw, follow_up(first), "sk-openclaw")
    assert last.session == first.session
    assert tool_results(upstream.messages_requests[-1])[0]["tool_use_id"] == TOOL_USE
    assert await continued(access_log, 5) == [False, False, False, False, True]
