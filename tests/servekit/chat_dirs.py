"""Small tokenizer directories for chat-template tests, and well-known template shapes.

``make_tokenizer_dir`` trains a byte-level BPE on a few sentences (the Llama 3 pre-tokenizer
regex, so text after a newline-ending header keeps its own tokens) with the given special
tokens, and writes what transformers and ``servekit.tokenizer.load_tokenizer`` both read:
``tokenizer.json``, ``tokenizer_config.json`` (special tokens, the template) and a minimal
``config.json`` (bos/eos ids).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as RawTokenizer

CORPUS = [
    "hello world, how are you today?",
    "the quick brown fox jumps over the lazy dog.",
    "user assistant system: be brief and kind.",
    "Zoë said héllo to the wörld ✓ twice",
    "I am fine, thank you! And you?\n\nGreat.",
] * 10

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

LLAMA3_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]
CHATML_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
PLAIN_SPECIALS = ["<s>", "</s>", "<image>"]

# Meta-Llama-3-8B-Instruct's template (the first message gets bos; contents are trimmed).
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)

# Qwen2.5-style ChatML: a default system message when the conversation has none.
CHATML_TEMPLATE = """{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- else %}
    {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if not (message.role == 'system' and loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

# Mistral-style: roles must alternate user/assistant, checked with raise_exception.
ALTERNATING_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}"
    "{% endif %}{% endfor %}"
)

# A system message folded into the first user turn, content parts, tojson, namespace, loop
# controls, {% generation %}, and a check that None-valued keys are dropped.
PARTS_TEMPLATE = """{{- bos_token }}
{%- set ns = namespace(system='') %}
{%- if messages[0]['role'] == 'system' %}
    {%- set ns.system = messages[0]['content'] %}
    {%- set messages = messages[1:] %}
{%- endif %}
{%- for message in messages %}
    {%- if message.tool_calls is defined %}
        {{- raise_exception('tool_calls should have been dropped: ' ~ message.tool_calls) }}
    {%- endif %}
    {{- '<|' + message['role'] + '|>' }}
    {%- if message.name is defined %}{{ ' name=' ~ (message.name | tojson) }}{% endif %}
    {{- '\\n' }}
    {%- if loop.first and ns.system %}{{- ns.system + '\\n\\n' }}{% endif %}
    {%- if message['content'] is string %}
        {%- if message['role'] == 'assistant' %}
            {% generation %}{{- message['content'] }}{% endgeneration %}
        {%- else %}
            {{- message['content'] }}
        {%- endif %}
    {%- else %}
        {%- for part in message['content'] %}
            {%- if part['type'] == 'stop' %}{% break %}{% endif %}
            {%- if part['type'] == 'text' %}{{- part['text'] }}
            {%- elif part['type'] == 'image' %}{{- '<image>' }}
            {%- endif %}
        {%- endfor %}
    {%- endif %}
    {{- eos_token + '\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|assistant|>\\n' }}{% endif %}
"""

# Qwen3-style: earlier assistant turns lose their <think>...</think> part, so a turn's rendering
# no longer starts with the previous turn's prompt plus the reply as generated.
THINK_TEMPLATE = """{%- for message in messages %}
    {%- set content = message['content'] %}
    {%- if message['role'] == 'assistant' and '</think>' in content %}
        {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
    {%- endif %}
    {{- '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{% endif %}
"""


def train_tokenizer(specials: list[str]) -> RawTokenizer:
    """A byte-level BPE over ``CORPUS`` with ``specials`` as special added tokens (ids 0..)."""
    tok = RawTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def make_tokenizer_dir(
    path: Path,
    *,
    specials: list[str],
    bos: str | None,
    eos: str,
    template: Any = None,
    jinja_file: str | None = None,
    bos_as_added_token: bool = False,
) -> Path:
    """A tokenizer directory; ``template`` goes into ``tokenizer_config.json`` (a string or a
    list of named templates), ``jinja_file`` into ``chat_template.jinja``."""
    path.mkdir(parents=True)
    tok = train_tokenizer(specials)
    tok.save(str(path / "tokenizer.json"))
    config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos}
    if bos is not None:
        config["bos_token"] = (
            {"__type": "AddedToken", "content": bos, "special": True} if bos_as_added_token else bos
        )
    if template is not None:
        config["chat_template"] = template
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    if jinja_file is not None:
        (path / "chat_template.jinja").write_text(jinja_file)
    model_config = {
        "bos_token_id": None if bos is None else tok.token_to_id(bos),
        "eos_token_id": tok.token_to_id(eos),
    }
    (path / "config.json").write_text(json.dumps(model_config))
    return path
