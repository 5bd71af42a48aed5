"""The wire protocols: one module per protocol turns its request into a `turns.TurnRequest` and the core's neutral
events into its JSON and SSE payloads (`chat`: OpenAI Chat Completions); `decoding` holds what every protocol's
request decoding shares, `models` the model list.
"""
