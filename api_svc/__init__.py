"""api_svc: the OpenAI-compatible HTTP front door (docs/api.md).

A process of its own in front of the scheduler: it speaks OpenAI's HTTP API (``/v1/models``,
``/v1/completions``, ``/v1/chat/completions``, server-sent events when ``stream`` is set) and the
scheduler's gRPC API behind it, through the same SDK every other client uses (``client.aio``).
It renders chat templates and tokenizes prompts (the tokenizer only, never the weights); the
scheduler detokenises, so text, multi-byte characters and stop strings come out exactly as on the
gRPC path. Why a process of its own: docs/architecture.md ("The HTTP front door").
"""
