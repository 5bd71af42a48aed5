from __future__ import annotations

from tests.conftest import Proxy


async def test_one_request(proxy: Proxy) -> None:
    answer = await proxy.openai.chat.completions.create(
        model="claude-sonnet-4", messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.choices[0].message.content == "Hello from fake upstream!"
