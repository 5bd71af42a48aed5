"""The model list (`GET /v1/models`) in the OpenAI shape, which every OpenAI-compatible client reads."""

from __future__ import annotations

from msgspec import Struct


class ModelCard(Struct):
    id: str
    created: int
    owned_by: str = "anthropic"
    object: str = "model"


class ModelList(Struct):
    data: list[ModelCard]
    object: str = "list"
