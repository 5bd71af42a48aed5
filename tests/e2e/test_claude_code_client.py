"""Claude Code as a client of maxproxy's Messages API: a second pinned CLI, with its own HOME and `ANTHROPIC_BASE_URL`
at maxproxy (not at the fake upstream), answers a `-p` prompt with the model's text, runs its own tool loop through
maxproxy (the model's `tool_use` reaches it, it runs the tool itself, and its `tool_result` goes back to the turn
waiting on maxproxy's worker), and authenticates with a maxproxy key from either of its key variables.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from maxproxy.bench.upstream import FakeUpstream, Received, Reply, Text, ToolUse
from maxproxy.settings import PROJECT_CLI

from tests.conftest import Proxy, ProxyFactory

MODEL = "claude-sonnet-4"
CLIENT_TIMEOUT = 60.0


@dataclass(frozen=True)
class Run:
    code: int | None
    stdout: str
    stderr: str


async def claude_code(proxy: Proxy, tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Run:
    """One `claude -p` run of the client CLI against maxproxy. Its environment is built from nothing, so none of the
    server's (its OAuth token, its base URL at the fake upstream) leaks into it; no retries, so an error shows at once.
    """
    home, work = tmp_path / "client-home", tmp_path / "client-work"
    home.mkdir(exist_ok=True)
    work.mkdir(exist_ok=True)
    environment = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "TMPDIR": str(work),
        "ANTHROPIC_BASE_URL": proxy.url,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "CLAUDE_CODE_MAX_RETRIES": "0",
        **(env if env is not None else {"ANTHROPIC_API_KEY": "not-needed"}),
    }
    proc = await asyncio.create_subprocess_exec(
        str(PROJECT_CLI),
        "-p",
        *args,
        cwd=work,
        env=environment,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(CLIENT_TIMEOUT):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:  # timed out or cancelled: never leave the client behind
            proc.kill()
            await proc.wait()
    return Run(proc.returncode, out.decode(), err.decode())


def tool_results(received: Received) -> list[dict[str, Any]]:
    content = received.messages[-1]["content"]
    return [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]


def result_text(block: dict[str, Any]) -> str:
    content = block["content"]
    return content if isinstance(content, str) else "".join(c.get("text", "") for c in content)


async def test_claude_code_answers_a_prompt_through_maxproxy(
    proxy: Proxy, upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.push(Reply.text("Hello from the model behind maxproxy", pieces=3))

    run = await claude_code(proxy, tmp_path, "Say hello in one line", "--model", MODEL)

    assert (run.code, run.stdout.strip()) == (0, "Hello from the model behind maxproxy"), run
    [call] = upstream.messages_requests
    assert "Say hello in one line" in "\n".join(call.texts())
    # The client's billing-header system block describes the client, not the prompt: only the worker's own is sent.
    assert json.dumps(call.body).count("x-anthropic-billing-header") == 1


async def test_claude_code_runs_its_own_tool_loop_through_maxproxy(
    proxy: Proxy, upstream: FakeUpstream, tmp_path: Path
) -> None:
    """The model asks for the client's Bash tool; the client CLI runs it (the shell computes 42) and its result goes
    back to the waiting turn: the upstream sees the model's own call answered, not a replayed conversation."""

    def model(received: Received) -> Reply | None:
        if results := tool_results(received):
            return Reply.text(f"The tool printed: {result_text(results[0]).split()[0]}")
        return Reply(
            blocks=(Text.of("Running it."), ToolUse("Bash", {"command": "echo $((6*7))-from-the-client"})),
            stop_reason="tool_use",
        )

    upstream.responder = model

    run = await claude_code(
        proxy, tmp_path, "Run the command", "--model", MODEL, "--allowedTools", "Bash", "--output-format", "json"
    )

    result = json.loads(run.stdout)
    assert (run.code, result["is_error"], result["num_turns"]) == (0, False, 2), result["result"]
    assert result["result"].endswith("The tool printed: 42-from-the-client")
    _, second = upstream.messages_requests
    [call] = [b for b in second.messages[-2]["content"] if b.get("type") == "tool_use"]
    [answer] = tool_results(second)
    assert answer["tool_use_id"] == call["id"] == "toolu_fake_1_1"  # the model's own call answered: the turn went on
    assert result_text(answer).startswith("42-from-the-client")


KEYS = """
[keys.coder]
key = "sk-claude-code-0001"
"""


@pytest.mark.parametrize("variable", ["ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"])
async def test_claude_code_authenticates_with_a_maxproxy_key(
    cli_env: Path, start_proxy: ProxyFactory, upstream: FakeUpstream, tmp_path: Path, variable: str
) -> None:
    """`ANTHROPIC_API_KEY` arrives as `x-api-key`, `ANTHROPIC_AUTH_TOKEN` as `Authorization: Bearer`: both are keys
    of the keys file; the request is the key's in its usage; a wrong key gets no further than maxproxy."""
    path = tmp_path / "keys.toml"
    path.write_text(KEYS)
    proxy = await start_proxy(keys_file=str(path))
    upstream.push(Reply.text("Authenticated answer"))

    run = await claude_code(proxy, tmp_path, "hi", "--model", MODEL, env={variable: "sk-claude-code-0001"})

    assert (run.code, run.stdout.strip()) == (0, "Authenticated answer"), run
    async with proxy.http.get(f"{proxy.url}/v1/usage", headers={"x-api-key": "sk-claude-code-0001"}) as response:
        assert response.status == 200
        [row] = (await response.json())["data"]
    assert (row["key"], row["model"], row["requests"]) == ("coder", MODEL, 1)

    wrong = await claude_code(proxy, tmp_path, "hi", "--model", MODEL, env={variable: "sk-wrong-0000"})

    assert wrong.code == 1, wrong
    assert len(upstream.messages_requests) == 1


async def test_claude_code_with_its_default_model(proxy: Proxy, upstream: FakeUpstream, tmp_path: Path) -> None:
    """Without `--model` the client asks for its default, `claude-opus-5-5`, with adaptive thinking, an effort and
    its environment as a `role: "system"` message between the user's messages: maxproxy serves it."""
    upstream.push(Reply.text("Answered on the default model"))

    run = await claude_code(proxy, tmp_path, "Say hello", "--output-format", "json")

    result = json.loads(run.stdout)
    assert (run.code, result["is_error"]) == (0, False), result["result"]
    assert result["result"] == "Answered on the default model"
    assert list(result["modelUsage"]) == ["claude-opus-5-5"]
    [call] = upstream.messages_requests
    assert "opus" in call.body["model"]


async def test_claude_code_gets_the_answer_streamed(proxy: Proxy, upstream: FakeUpstream, tmp_path: Path) -> None:
    upstream.push(Reply.text("one two three", pieces=3, delay=0.05))

    run = await claude_code(
        proxy, tmp_path, "Count", "--model", MODEL, "--output-format", "stream-json", "--verbose",
        "--include-partial-messages",
    )  # fmt: skip

    assert run.code == 0, run
    events = [json.loads(line) for line in run.stdout.splitlines()]
    deltas = [
        e["event"]["delta"]["text"]
        for e in events
        if e["type"] == "stream_event" and e["event"]["type"] == "content_block_delta"
        and e["event"]["delta"]["type"] == "text_delta"
    ]  # fmt: skip
    assert "".join(deltas) == "one two three"
    assert len(deltas) > 1  # as the model wrote it, not in one piece at the end


async def test_claude_code_shows_an_upstream_error_from_maxproxy(
    proxy: Proxy, upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.push(Reply.error(529, "Overloaded"))

    run = await claude_code(proxy, tmp_path, "hi", "--model", MODEL, "--output-format", "json")

    result = json.loads(run.stdout)
    assert (run.code, result["is_error"], result["api_error_status"]) == (1, True, 529), result["result"]


async def test_claude_code_continues_its_conversation_on_the_held_worker(
    proxy: Proxy, upstream: FakeUpstream, tmp_path: Path
) -> None:
    """`claude -p --continue` resends the conversation with the next prompt: it goes on on the worker that holds it."""
    upstream.push(Reply.text("First answer"), Reply.text("Second answer"))

    first = await claude_code(proxy, tmp_path, "First question", "--model", MODEL)
    second = await claude_code(proxy, tmp_path, "--continue", "Second question", "--model", MODEL)

    assert (first.code, first.stdout.strip(), second.code, second.stdout.strip()) == (
        0, "First answer", 0, "Second answer"
    ), (first, second)  # fmt: skip
    _, again = upstream.messages_requests
    turns = [m for m in again.messages if m["role"] != "system"]  # the worker's own environment notes aside
    assert [m["role"] for m in turns][-2:] == ["assistant", "user"]
    assert turns[-2]["content"][-1]["text"] == "First answer"  # the model's own answer, not a replayed transcript
    last = json.dumps(turns[-1])
    assert "Second question" in last
    assert "First question" not in last
