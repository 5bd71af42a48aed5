"""The served models end to end: the real CLI's `list_models` answer merged at start-up, `/v1/models` in OpenAI's
and (with `anthropic-version`) Anthropic's shape read by the real SDKs, a CLI-listed id reaching the upstream as it
is, `POST /v1/messages/count_tokens` without a model call, and the configured table when the CLI lists nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from unittest.mock import ANY

import anthropic
import pytest
from maxproxy.bench.upstream import FakeUpstream, Reply
from maxproxy.claude.command import Launch
from maxproxy.pool import WorkerState
from maxproxy.settings import DEFAULT_MODELS
from maxproxy.state import MODELS, POOL

from tests.conftest import Proxy, ProxyFactory, fake_cli, wait_for
from tests.e2e import HELLO

LISTED = ("default", "opus", "fable", "sonnet", "haiku", "claude-opus-5-5", "claude-fable-5-2", "claude-sonnet-5-5")


@pytest.fixture
async def claude(proxy: Proxy) -> AsyncIterator[anthropic.AsyncAnthropic]:
    client = anthropic.AsyncAnthropic(base_url=proxy.url, api_key="not-needed", max_retries=0)
    yield client
    await client.close()


async def test_the_openai_list_has_the_clis_models_and_the_configured_names(proxy: Proxy) -> None:
    assert proxy.app[MODELS].source == "cli"
    names = [model.id async for model in proxy.openai.models.list()]
    for name in (*LISTED, "claude-opus-4", "claude-sonnet-4", "claude-haiku-4", *DEFAULT_MODELS):
        assert name in names
    card = await proxy.openai.models.retrieve("claude-opus-5-5")
    assert (card.id, card.object, card.owned_by) == ("claude-opus-5-5", "model", "anthropic")


async def test_a_cli_listed_id_reaches_the_upstream_as_it_is(proxy: Proxy, upstream: FakeUpstream) -> None:
    upstream.push(Reply.text("chat"), Reply.text("responses"))
    answer = await proxy.openai.chat.completions.create(model="claude-opus-5-5", messages=HELLO)
    assert (answer.model, answer.choices[0].message.content) == ("claude-opus-5-5", "chat")
    response = await proxy.openai.responses.create(model="claude-opus-5-5", input="hi")
    assert (response.model, response.output_text) == ("claude-opus-5-5", "responses")
    assert [r.body["model"] for r in upstream.messages_requests] == ["claude-opus-5-5", "claude-opus-5-5"]


async def test_the_anthropic_sdk_reads_anthropics_shape(proxy: Proxy, claude: anthropic.AsyncAnthropic) -> None:
    catalog = proxy.app[MODELS]
    served = list(catalog)
    listed = [model async for model in claude.models.list()]  # pages of 20, followed by the SDK
    assert [m.id for m in listed] == served
    opus = next(m for m in listed if m.id == "claude-opus-5-5")
    assert (opus.type, opus.display_name, opus.max_tokens) == ("model", "Claude Opus 5.5", 128_000)
    assert opus.created_at.tzinfo is not None
    page = await claude.models.list(limit=2)
    assert [m.id for m in page.data] == served[:2]
    assert page.has_more
    after = await claude.models.list(limit=3, after_id=page.data[-1].id)
    assert [m.id for m in after.data] == served[2:5]
    assert after.first_id == after.data[0].id
    before = await claude.models.list(limit=5, before_id=after.data[0].id)
    assert [m.id for m in before.data] == served[:2]
    assert not before.has_more
    one = await claude.models.retrieve("fable")
    assert (one.id, one.display_name, one.type) == ("fable", "Fable", "model")
    with pytest.raises(anthropic.NotFoundError) as missing:
        await claude.models.retrieve("claude-nope")
    assert missing.value.body == {"type": "error", "error": {"type": "not_found_error", "message": ANY}}
    with pytest.raises(anthropic.BadRequestError) as bad:
        await claude.models.list(after_id="claude-nope")
    assert bad.value.body == {"type": "error", "error": {"type": "invalid_request_error", "message": ANY}}


async def test_count_tokens_is_an_estimate_and_no_model_call(
    proxy: Proxy, upstream: FakeUpstream, claude: anthropic.AsyncAnthropic
) -> None:
    asked = await claude.messages.with_raw_response.count_tokens(
        model="claude-opus-5-5",
        system="Be brief.",
        messages=[{"role": "user", "content": "x" * 400}],
        tools=[{"name": "get_weather", "input_schema": {"type": "object"}}],
        thinking={"type": "enabled", "budget_tokens": 2048},
    )
    assert asked.headers["x-maxproxy-token-count"] == "estimate"
    assert (await asked.parse()).input_tokens > 100
    async with proxy.http.post(
        f"{proxy.url}/v1/messages/count_tokens?beta=true", json={"model": "claude-nope", "messages": HELLO}
    ) as response:
        assert response.status == 404
        assert (await response.json())["error"]["type"] == "not_found_error"  # the Messages API's error shape
    async with proxy.http.post(f"{proxy.url}/v1/messages/count_tokens", json={"model": "opus"}) as response:
        assert response.status == 400
        assert (await response.json())["error"]["type"] == "invalid_request_error"
    assert not [r for r in upstream.requests if r.path.startswith("/v1/messages")]  # no model call, no count either


@pytest.mark.parametrize("mode", ["no_list_models", "startup_fail"])
async def test_without_the_clis_list_the_configured_table_serves(
    tmp_path: Path, start_proxy: ProxyFactory, mode: str
) -> None:
    proxy = await start_proxy(claude_path=fake_cli(tmp_path, mode))
    assert proxy.app[MODELS].source == "configured"
    names = [model.id async for model in proxy.openai.models.list()]
    assert names == list(proxy.settings.model_table)
    async with proxy.http.get(f"{proxy.url}/v1/models/claude-opus-5-5") as response:
        assert response.status == 404
        assert (await response.json())["error"]["code"] == "model_not_found"


async def test_warm_models_and_key_models_may_name_a_cli_listed_id(
    cli_env: Path, start_proxy: ProxyFactory, upstream: FakeUpstream, tmp_path: Path
) -> None:
    """Both are read before the CLI is asked; once it listed the id, a worker is kept warm for it and the key may
    use it."""
    keys = tmp_path / "keys.toml"
    keys.write_text('[keys.bot]\nkey = "sk-bot-000001"\nmodels = ["claude-opus-5-5"]\n')
    proxy = await start_proxy(warm_models=["claude-opus-5-5"], min_idle=1, keys_file=str(keys))
    pool = proxy.app[POOL]
    opus = Launch(model="claude-opus-5-5")
    await wait_for(lambda: any(h.state is WorkerState.IDLE and h.launch == opus for h in pool.workers()), timeout=30)
    headers = {"Authorization": "Bearer sk-bot-000001"}
    body = {"model": "claude-opus-5-5", "messages": HELLO}
    async with proxy.http.post(f"{proxy.url}/v1/chat/completions", json=body, headers=headers) as response:
        assert response.status == 200, await response.text()
    assert upstream.messages_requests[-1].body["model"] == "claude-opus-5-5"
    async with proxy.http.post(
        f"{proxy.url}/v1/chat/completions", json={**body, "model": "claude-sonnet-4"}, headers=headers
    ) as response:
        assert response.status == 403  # not one of the key's models
