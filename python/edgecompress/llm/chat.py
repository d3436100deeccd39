"""Chat templates: the file's ``tokenizer.chat_template`` rendered in jinja2's immutable sandbox (a
template stored in a model file is untrusted code: it may not reach Python objects, call methods that
change state, or run long), or the architecture's known template when the file has none."""

from __future__ import annotations

from datetime import datetime
from typing import Any

__all__ = ["DEFAULT_TEMPLATES", "render"]

MAX_TEMPLATE_BYTES = 1 << 20
MAX_OUTPUT_CHARS = 1 << 22
MAX_LOOP_STEPS = 1 << 20  # range() steps of one rendering, nested loops included


def _sandbox_class() -> Any:
    from jinja2.exceptions import SecurityError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Sandbox(ImmutableSandboxedEnvironment):
        """Also refuses products and powers whose results would be huge ('a' * 10**9, 9 ** 9 ** 9)."""

        intercepted_binops = frozenset(["*", "**"])

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            if operator == "**" and isinstance(right, (int, float)) and abs(right) > 64:
                raise SecurityError("the template raises to a power above 64")
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_OUTPUT_CHARS:
                        raise SecurityError("the template builds a sequence that is too long")
            return super().call_binop(context, operator, left, right)

    return Sandbox


_Sandbox: Any = None

_GEMMA = (
    "{{ bos_token }}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set first = messages[0]['content'] + '\n\n' %}{% set messages = messages[1:] %}"
    "{% else %}{% set first = '' %}{% endif %}"
    "{% for m in messages %}"
    "{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + (first if loop.first else '') + m['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}")
_CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# llama.cpp falls back to ChatML for a file without a template; Gemma files get Gemma's turns
DEFAULT_TEMPLATES = {"gemma3": _GEMMA, "llama": _CHATML}


def _check_messages(messages: Any) -> list[dict[str, str]]:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise TypeError("messages: expected a non-empty list of {'role': ..., 'content': ...} dicts")
    out = []
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise TypeError(f"messages[{k}]: expected a dict with str 'role' and 'content', got {m!r:.80}")
        if m["role"] not in ("system", "user", "assistant"):
            raise ValueError(f"messages[{k}]: role must be system, user or assistant, got {m['role']!r}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def render(template: str | None, arch: str, messages: Any, bos_token: str, eos_token: str,
           add_generation_prompt: bool = True) -> str:
    """The prompt text of ``messages``; ValueError naming the problem for a template that fails."""
    from jinja2 import TemplateError
    from jinja2.exceptions import SecurityError

    global _Sandbox
    if _Sandbox is None:
        _Sandbox = _sandbox_class()
    msgs = _check_messages(messages)
    source = template if template is not None else DEFAULT_TEMPLATES[arch]
    if not isinstance(source, str) or len(source.encode("utf-8", "replace")) > MAX_TEMPLATE_BYTES:
        raise ValueError(f"chat template: expected a string of at most {MAX_TEMPLATE_BYTES} bytes")
    env = _Sandbox(trim_blocks=True, lstrip_blocks=True)
    budget = [MAX_LOOP_STEPS]

    def bounded_range(*args: Any) -> range:
        r = range(*args)
        budget[0] -= len(r)
        if budget[0] < 0:
            raise SecurityError(f"the template's loops run more than {MAX_LOOP_STEPS} steps")
        return r

    env.globals["range"] = bounded_range

    def raise_exception(message: str) -> None:
        raise TemplateError(str(message))

    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(str(fmt))
    try:
        out = env.from_string(source).render(messages=msgs, bos_token=bos_token, eos_token=eos_token,
                                             add_generation_prompt=add_generation_prompt)
    except TemplateError as e:  # SecurityError (a sandbox violation) is one
        raise ValueError(f"chat template: {type(e).__name__}: {e}") from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, ZeroDivisionError, RecursionError,
            OverflowError) as e:
        raise ValueError(f"chat template failed: {type(e).__name__}: {e}") from None
    if len(out) > MAX_OUTPUT_CHARS:
        raise ValueError(f"chat template: rendered more than {MAX_OUTPUT_CHARS} characters")
    return out
