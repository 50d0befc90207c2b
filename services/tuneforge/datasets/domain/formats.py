"""Input record formats: detection and conversion of one raw row into a canonical record.

Each converter takes the raw row (a dict from JSON, CSV or Parquet) and returns a canonical
record (``records.new_record``) or raises ``RowError`` naming the field, the cause and the fix.
CSV and Parquet cells that should hold a list of messages may hold it as a JSON string.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson

from tuneforge.common.errors import InvalidInput
from tuneforge.common.public_text import echo
from tuneforge.datasets.domain.records import RecordKind, new_record
from tuneforge.datasets.domain.rejects import RowError


class DatasetFormat(enum.StrEnum):
    """The record formats the service reads."""

    ALPACA = "alpaca"
    DOLLY = "dolly"
    CHAT = "chat"
    SHAREGPT = "sharegpt"
    PREFERENCE = "preference"
    OPENAI_DPO = "openai_dpo"
    TEXT = "text"
    KTO = "kto"
    PROMPT = "prompt"


CHAT_ROLES = frozenset({"system", "user", "assistant", "tool"})
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "tool": "tool",
    "function_call": "assistant",
    "observation": "tool",
}
DEFAULT_CATEGORY_FIELDS = ("category", "task")
# Roles other platforms write: Gemini/Vertex "model", Cohere "Chatbot"/"User", OpenAI "developer".
ROLE_ALIASES = {"model": "assistant", "chatbot": "assistant", "bot": "assistant", "human": "user",
                "developer": "system"}
_KNOWN_FIELDS = frozenset({"instruction", "input", "output", "context", "response", "messages", "conversations",
                           "prompt", "chosen", "rejected", "preferred_output", "non_preferred_output", "text",
                           "completion", "label", "margin",
                           *DEFAULT_CATEGORY_FIELDS})
# Other platforms' single-turn shapes, read as Alpaca (instruction/output): OpenAI's legacy and
# Bedrock's prompt/completion, Q&A sets' question/answer, Vertex AI's input_text/output_text.
_INSTRUCTION_ALIASES = (("prompt", "completion"), ("question", "answer"), ("input_text", "output_text"),
                        ("query", "response"))


def normalize_row(row: Mapping[str, Any]) -> Mapping[str, Any]:
    """The row with spreadsheet-style column names (``" Instruction"``, a BOM) and other platforms'
    shapes (see ``_INSTRUCTION_ALIASES``, Gemini ``contents``) renamed to the known ones; the same
    object when there is nothing to rename (the columnar fast path relies on that)."""
    renamed: dict[str, Any] | None = None
    for key in row:
        if isinstance(key, str) and key not in _KNOWN_FIELDS:
            clean = key.strip().lstrip("\ufeff").strip().lower()
            if clean in _KNOWN_FIELDS and clean not in row:
                renamed = renamed if renamed is not None else dict(row)
                renamed[clean] = renamed.pop(key)
    current: Mapping[str, Any] = renamed if renamed is not None else row
    keys = set(current)
    # prompt/completion WITH a label is KTO's labelled completion, not an instruction pair.
    if not keys & {"instruction", "messages", "conversations", "chosen", "text", "preferred_output", "label"}:
        for question, answer in _INSTRUCTION_ALIASES:
            if question in keys and answer in keys:
                out = {k: v for k, v in current.items() if k not in (question, answer)}
                out.update(instruction=current[question], output=current[answer])
                out.setdefault("input", "")
                return out
        if "contents" in keys:  # Gemini / Vertex chat: {"contents": [{"role", "parts": [{"text"}]}]}
            out = {k: v for k, v in current.items() if k != "contents"}
            out["messages"] = _gemini_messages(current["contents"])
            return out
    return current


def _gemini_messages(contents: Any) -> Any:
    if not isinstance(contents, list):
        return contents
    messages = []
    for turn in contents:
        if not isinstance(turn, Mapping):
            return contents  # left as is: the chat converter names the bad element
        parts = turn.get("parts")
        text = "".join(p.get("text", "") for p in parts if isinstance(p, Mapping)) if isinstance(parts, list) else parts
        messages.append({"role": turn.get("role"), "content": text})
    return messages


def detect_format(row: Mapping[str, Any]) -> DatasetFormat:
    """Detect the format from the keys of one row.

    Raises:
        InvalidInput: no known shape matches (the message lists the keys seen and the shapes).
    """
    keys = set(normalize_row(row))
    if "messages" in keys:
        return DatasetFormat.CHAT
    if "conversations" in keys:
        return DatasetFormat.SHAREGPT
    if "preferred_output" in keys or "non_preferred_output" in keys:
        return DatasetFormat.OPENAI_DPO
    if {"chosen", "rejected"} <= keys:
        return DatasetFormat.PREFERENCE
    if {"prompt", "completion", "label"} <= keys:
        return DatasetFormat.KTO
    if "instruction" in keys and "response" in keys:
        return DatasetFormat.DOLLY
    if "instruction" in keys and "output" in keys:
        return DatasetFormat.ALPACA
    if "text" in keys:
        return DatasetFormat.TEXT
    if "prompt" in keys and not keys & _NOT_PROMPT_ONLY:
        return DatasetFormat.PROMPT
    shown = ", ".join(sorted(keys)[:20]) or "(none)"
    raise InvalidInput.field_error(
        "format",
        f"cannot detect the record format from the columns [{shown}]: expected one of "
        "messages (chat), conversations (ShareGPT), prompt/chosen/rejected (preference), "
        "input/preferred_output/non_preferred_output (OpenAI DPO), prompt/completion/label (KTO), "
        "instruction/input/output (Alpaca), instruction/context/response (Dolly), text, or prompt "
        "with an optional answer (prompt-only, for online RL); rename the columns or declare "
        "the format",
    )


def _string(row: Mapping[str, Any], key: str, *, required: bool = True, empty_ok: bool = False) -> str:
    value = row.get(key)
    if value is None:
        if required:
            raise RowError(key, f"is missing: add a string field '{key}'")
        return ""
    if not isinstance(value, str):
        raise RowError(key, f"must be a string, got {_type_name(value)}: store it as text")
    if not empty_ok and required and not value.strip():
        raise RowError(key, "is empty: give a non-empty text")
    return value


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", bool: "a boolean", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__
    )


def _json_list(value: Any, field: str) -> list[Any]:
    """Accept a list, or a JSON string holding one (CSV and Parquet cells)."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise RowError(field, f"holds invalid JSON ({exc}): store a JSON list of messages") from None
    if not isinstance(value, list):
        raise RowError(field, f"must be a list of messages, got {_type_name(value)}")
    if not value:
        raise RowError(field, "is an empty list: give at least one message")
    return value


def _messages(value: Any, field: str, role_key: str, content_key: str, roles: Mapping[str, str]) -> list[dict]:
    out = []
    for i, item in enumerate(_json_list(value, field)):
        where = f"{field}[{i}]"
        if not isinstance(item, Mapping):
            raise RowError(where, f"must be an object with '{role_key}' and '{content_key}', got {_type_name(item)}")
        role = item.get(role_key)
        if isinstance(role, str):
            role = role.strip().lower()
            role = role if role in roles else ROLE_ALIASES.get(role, role)
        if not isinstance(role, str) or role not in roles:
            allowed = ", ".join(sorted(roles))
            raise RowError(f"{where}.{role_key}", f"is {echo(role)}: use one of {allowed}")
        content = item.get(content_key)
        if content is None:
            raise RowError(f"{where}.{content_key}", f"is missing: add the message text as '{content_key}'")
        if not isinstance(content, str):
            raise RowError(f"{where}.{content_key}", f"must be a string, got {_type_name(content)}")
        out.append({"role": roles[role], "content": content})
    return out


def check_conversation(messages: list[dict], field: str, *, needs_answer: bool = True) -> None:
    """Check role order: optional system first, then user/assistant alternating, ending with
    an assistant turn that is not empty (tool turns may follow an assistant turn)."""
    start = 1 if messages[0]["role"] == "system" else 0
    expected = "user"
    for i in range(start, len(messages)):
        role = messages[i]["role"]
        if role == "system":
            raise RowError(f"{field}[{i}].role", "system message after the first turn: move it to the start")
        if role == "tool":
            if i == 0 or messages[i - 1]["role"] not in ("assistant", "tool"):
                raise RowError(f"{field}[{i}].role", "tool message not after an assistant turn")
            expected = "assistant"
            continue
        if role != expected:
            raise RowError(f"{field}[{i}].role", f"is '{role}' where '{expected}' was expected: turns must alternate user/assistant, starting with user")
        if role == "assistant" and not messages[i]["content"].strip():
            raise RowError(f"{field}[{i}].content", "empty assistant turn: give the answer or drop the turn")
        expected = "assistant" if role == "user" else "user"
    if needs_answer and messages[-1]["role"] not in ("assistant",):
        raise RowError(f"{field}[{len(messages) - 1}].role", "the conversation must end with an assistant turn")
    if start == len(messages):
        raise RowError(field, "holds only a system message: add user and assistant turns")


def _chat(row: Mapping[str, Any]) -> tuple[RecordKind, dict]:
    messages = _messages(row.get("messages"), "messages", "role", "content", {r: r for r in CHAT_ROLES})
    check_conversation(messages, "messages")
    return RecordKind.CHAT, {"messages": messages}


def _sharegpt(row: Mapping[str, Any]) -> tuple[RecordKind, dict]:
    messages = _messages(row.get("conversations"), "conversations", "from", "value", SHAREGPT_ROLES)
    check_conversation(messages, "conversations")
    return RecordKind.CHAT, {"messages": messages}


def _instruction(row: Mapping[str, Any], context: str, answer: str) -> tuple[RecordKind, dict]:
    instruction = _string(row, "instruction")
    extra = _string(row, context, required=False)
    output = row.get(answer)
    if output is None:
        raise RowError(answer, f"is missing: add the answer as '{answer}'")
    if not isinstance(output, str):
        raise RowError(answer, f"must be a string, got {_type_name(output)}")
    if not output.strip():
        raise RowError(answer, "empty assistant turn: give the answer")
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    return RecordKind.INSTRUCTION, {"messages": messages}


def _answer(value: Any, field: str) -> str:
    """A preference answer: a string or a list of messages whose last is the assistant's."""
    if isinstance(value, str) and not value.lstrip().startswith("["):
        if not value.strip():
            raise RowError(field, "empty assistant answer: give the answer text")
        return value
    if value is None:
        raise RowError(field, "is missing: give the answer as a string or a list of messages")
    messages = _messages(value, field, "role", "content", {r: r for r in CHAT_ROLES})
    last = messages[-1]
    if last["role"] != "assistant":
        raise RowError(f"{field}[{len(messages) - 1}].role", "the answer must end with an assistant message")
    if not last["content"].strip():
        raise RowError(f"{field}[{len(messages) - 1}].content", "empty assistant answer: give the answer text")
    return last["content"]


def _prompt(value: Any, field: str) -> list[dict]:
    if isinstance(value, str) and not value.lstrip().startswith("["):
        if not value.strip():
            raise RowError(field, "is empty: give the prompt text")
        return [{"role": "user", "content": value}]
    if value is None:
        raise RowError(field, "is missing: give the prompt as a string or a list of messages")
    messages = _messages(value, field, "role", "content", {r: r for r in CHAT_ROLES})
    if messages[-1]["role"] == "assistant":
        raise RowError(f"{field}[{len(messages) - 1}].role", "the prompt must end with a user turn")
    return messages


def _preference(row: Mapping[str, Any]) -> tuple[RecordKind, dict]:
    prompt_value = row.get("prompt")
    chosen_value, rejected_value = row.get("chosen"), row.get("rejected")
    if prompt_value is None and isinstance(chosen_value, list) and len(chosen_value) > 1:
        # Anthropic-HH style: full conversations in chosen/rejected, the prompt is their prefix.
        prompt_value = chosen_value[:-1]
        chosen_value, rejected_value = chosen_value[-1:], (rejected_value or [])[-1:]
    prompt = _prompt(prompt_value, "prompt")
    chosen = _answer(chosen_value, "chosen")
    rejected = _answer(rejected_value, "rejected")
    fields: dict[str, Any] = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if row.get("margin") not in (None, ""):
        fields["margin"] = _margin(row["margin"])
    return RecordKind.PREFERENCE, fields


def _margin(value: Any) -> float:
    """A preference pair's margin (reward models): a finite number >= 0 (CSV cells may hold it as text)."""
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise RowError("margin", f"is {echo(value)}: give a number such as 0.5") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RowError("margin", f"must be a number, got {_type_name(value)}")
    if not math.isfinite(value) or value < 0 or value > 1e6:
        raise RowError("margin", f"is {value}: give a finite number between 0 and 1e6")
    return float(value)


_TRUE, _FALSE = frozenset({"true", "1", "yes"}), frozenset({"false", "0", "no"})


def _label(value: Any) -> bool:
    """KTO's label: true (desirable) or false (undesirable); CSV cells may hold true/false, 1/0 or yes/no."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    if value is None:
        raise RowError("label", "is missing: give true (desirable completion) or false (undesirable)")
    raise RowError("label", f"is {echo(value)}: give true (desirable completion) or false (undesirable)")


def _labelled(row: Mapping[str, Any]) -> tuple[RecordKind, dict]:
    """KTO's unpaired data: a prompt, one completion and whether it is desirable (trl's KTO format)."""
    prompt = _prompt(row.get("prompt"), "prompt")
    completion = _answer(row.get("completion"), "completion")
    return RecordKind.LABELLED, {"prompt": prompt, "completion": completion, "label": _label(row.get("label"))}


def _openai_dpo(row: Mapping[str, Any]) -> tuple[RecordKind, dict]:
    input_value = row.get("input")
    if isinstance(input_value, str) and input_value.lstrip().startswith("{"):
        try:
            input_value = orjson.loads(input_value)
        except orjson.JSONDecodeError:
            raise RowError("input", "holds invalid JSON: store an object with 'messages'") from None
    if not isinstance(input_value, Mapping):
        raise RowError("input", f"must be an object with 'messages', got {_type_name(input_value)}")
    prompt = _prompt(input_value.get("messages"), "input.messages")
    chosen = _answer(row.get("preferred_output"), "preferred_output")
    rejected = _answer(row.get("non_preferred_output"), "non_preferred_output")
    return RecordKind.PREFERENCE, {"prompt": prompt, "chosen": chosen, "rejected": rejected}


# Columns that make a row with a prompt something other than prompt-only (a completion or a label).
_NOT_PROMPT_ONLY = frozenset({"chosen", "rejected", "completion", "label", "response", "output"})
# The reference answer of a prompt-only row, under the names RL datasets use (GSM8K/TRL "answer",
# MATH "solution", verl "ground_truth").
ANSWER_FIELDS = ("answer", "solution", "ground_truth")


def _reference_answer(row: Mapping[str, Any]) -> str | None:
    for key in ANSWER_FIELDS:
        value = row.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise RowError(key, f"must be a string (the reference answer), got {_type_name(value)}: store it as "
                                "text")
        return str(value)
    return None


def _prompt_only(row: Mapping[str, Any]) -> tuple[RecordKind, dict]:
    prompt = _prompt(row.get("prompt"), "prompt")
    start = 1 if prompt[0]["role"] == "system" else 0
    if start == len(prompt):
        raise RowError("prompt", "holds only a system message: add the user's turn")
    check_conversation(prompt, "prompt", needs_answer=False)
    return RecordKind.PROMPT, {"prompt": prompt, "answer": _reference_answer(row)}


def _text(row: Mapping[str, Any]) -> tuple[RecordKind, dict]:
    return RecordKind.TEXT, {"text": _string(row, "text")}


_CONVERTERS: dict[DatasetFormat, Callable[[Mapping[str, Any]], tuple[RecordKind, dict]]] = {
    DatasetFormat.ALPACA: lambda row: _instruction(row, "input", "output"),
    DatasetFormat.DOLLY: lambda row: _instruction(row, "context", "response"),
    DatasetFormat.CHAT: _chat,
    DatasetFormat.SHAREGPT: _sharegpt,
    DatasetFormat.PREFERENCE: _preference,
    DatasetFormat.OPENAI_DPO: _openai_dpo,
    DatasetFormat.TEXT: _text,
    DatasetFormat.KTO: _labelled,
    DatasetFormat.PROMPT: _prompt_only,
}


def _category(row: Mapping[str, Any], fields: Iterable[str]) -> str | None:
    for key in fields:
        value = row.get(key)
        if value is None or value == "":
            continue
        if not isinstance(value, str | int):
            raise RowError(key, f"category label must be a string, got {_type_name(value)}")
        return str(value).strip() or None
    return None


def convert_row(
    row: Any,
    fmt: DatasetFormat,
    *,
    source: str,
    row_number: int,
    category_fields: tuple[str, ...] = DEFAULT_CATEGORY_FIELDS,
) -> dict[str, Any]:
    """Convert one raw row into a canonical record.

    Raises:
        RowError: the row does not have the format's shape (field, cause and fix).
    """
    if not isinstance(row, Mapping):
        raise RowError("", f"must be a JSON object, got {_type_name(row)}: write one object per row")
    row = normalize_row(row)
    kind, fields = _CONVERTERS[fmt](row)
    category = _category(row, category_fields)
    return new_record(kind, source=source, row=row_number, category=category, **fields)
