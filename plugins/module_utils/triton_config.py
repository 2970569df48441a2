# Copyright: deepseek.cluster contributors
# Apache License 2.0 (see LICENSE)
"""Triton model configuration (config.pbtxt) from plain data, and back.

Roles describe a model as a mapping that mirrors Triton's ModelConfig message (model_config.proto):
scalars, nested messages as mappings, repeated fields as lists. ``to_pbtxt`` writes the protobuf text
format Triton reads; ``parse_pbtxt`` reads that format (the subset config.pbtxt files use) into the same
data, so ``parse_pbtxt(to_pbtxt(x)) == x`` for any ``x`` without ``None`` values. Conventions that keep the
data short and the output exact:

- a string made only of capitals, digits and underscores (``TYPE_STRING``, ``KIND_CPU``) is an enum
  value and is written bare; every other string is quoted. The parser keeps what it read: a quoted string
  that looks like an enum comes back as ``Quoted`` and a bare identifier that does not (a lower-case enum
  name) as ``Bare``, both ``str`` subclasses the writer honours, so a file read and written again keeps its
  quoting;
- ``parameters`` is a mapping of name to string, written as Triton's
  ``parameters { key: "..." value: { string_value: "..." } }`` map entries (and read back into a mapping).

The parser is pure Python on purpose: the controller needs no protobuf package to read an image's
config.pbtxt. ``validate_with_triton_schema`` checks a text against Triton's own ModelConfig message when
``tritonclient`` (which ships ``tritonclient.grpc.model_config_pb2``) and ``protobuf`` are importable; the
unit tests always do (tests/unit/plugins/test_triton_config.py).
"""

from __future__ import annotations

import re
from typing import Any

ENUM = re.compile(r"^[A-Z][A-Z0-9_]*$")
# Control characters and the two that need a backslash; everything else (UTF-8 included) is written as is.
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", '"': '\\"', "\\": "\\\\"}


class Quoted(str):
    """A string written quoted even though it looks like an enum name (``name: "DEEPSEEK"``)."""

    __slots__ = ()


class Bare(str):
    """An identifier written bare even though it does not look like an enum name (an enum in lower case)."""

    __slots__ = ()


class PbtxtError(ValueError):
    """config.pbtxt text that cannot be read; the message gives the line and column."""


def _quote(text: str) -> str:
    """A protobuf text-format string literal; non-ASCII stays UTF-8 (Triton's and Python's parsers read it)."""
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\{ord(char):03o}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _scalar(value: Any) -> str:
    """One scalar in text format: bools lower-case, numbers as they are, enums bare, strings quoted."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    if isinstance(value, Bare) or (ENUM.match(text) and not isinstance(value, Quoted)):
        return text
    return _quote(text)


def _field(name: str, value: Any, indent: str) -> list[str]:
    """Lines for one field (which may be repeated or a nested message)."""
    if name == "parameters" and isinstance(value, dict):
        return [
            f"{indent}parameters {{ key: {_quote(str(key))} value: {{ string_value: {_quote(str(val))} }} }}"
            for key, val in value.items()
        ]
    if isinstance(value, dict):
        return [f"{indent}{name} {{", *_message(value, indent + "  "), f"{indent}}}"]
    if isinstance(value, list):
        if value and all(isinstance(item, dict) for item in value):
            lines = [f"{indent}{name} ["]
            for position, item in enumerate(value):
                closing = "}," if position < len(value) - 1 else "}"
                lines += [f"{indent}  {{", *_message(item, indent + "    "), f"{indent}  {closing}"]
            return [*lines, f"{indent}]"]
        return [f"{indent}{name}: [{', '.join(_scalar(item) for item in value)}]"]
    return [f"{indent}{name}: {_scalar(value)}"]


def _message(message: dict[str, Any], indent: str) -> list[str]:
    lines = []
    for name, value in message.items():
        if value is None:
            continue
        lines += _field(str(name), value, indent)
    return lines


def to_pbtxt(config: dict[str, Any]) -> str:
    """config.pbtxt text for a ModelConfig given as data (see the module docstring)."""
    if not isinstance(config, dict) or not config.get("name"):
        raise ValueError("a Triton model configuration needs at least a name")
    return "\n".join(_message(config, "")) + "\n"


# --- reading ----------------------------------------------------------------------------------------------
# The subset of the protobuf text format that config.pbtxt files use (protobuf's text_format grammar):
# fields `name: scalar`, `name { ... }` / `name: { ... }` / `name < ... >`, lists `name: [a, b]` and
# `name [ {...}, {...} ]`, a field given several times (repeated), optional `,` or `;` after a field,
# double- or single-quoted strings with C escapes (adjacent literals are joined), integers, floats,
# identifiers (enum names, true/false, inf, nan) and `#` comments. Extensions (`[ext.name]`) and `Any`
# expansions are not part of Triton's model configuration and are refused.

_TOKEN = re.compile(
    r"""
    (?P<space>[ \t\r\f\v]+)
  | (?P<newline>\n)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>-?(?:0[xX][0-9a-fA-F]+|(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?[fF]?))
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[{}\[\]<>:,;./-])
    """,
    re.VERBOSE,
)
_SIMPLE_ESCAPES = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
    "'": "'",
    '"': '"',
    "?": "?",
}
_TRUE = {"true", "True", "t"}
_FALSE = {"false", "False", "f"}
_FLOAT_WORDS = {"inf": float("inf"), "infinity": float("inf"), "nan": float("nan")}


class _Token:
    __slots__ = ("kind", "text", "line", "column")

    def __init__(self, kind: str, text: str, line: int, column: int) -> None:
        self.kind, self.text, self.line, self.column = kind, text, line, column

    def where(self) -> str:
        return f"line {self.line}, column {self.column}"


def _tokens(text: str) -> list[_Token]:
    tokens, line, line_start, pos = [], 1, 0, 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match:
            snippet = text[pos : pos + 12].split("\n")[0]
            if text[pos] in "\"'":
                raise PbtxtError(f"line {line}, column {pos - line_start + 1}: string not closed on its line")
            if text.startswith("${", pos):
                raise PbtxtError(
                    f"line {line}, column {pos - line_start + 1}: unfilled template placeholder {snippet!r} "
                    "(a template such as upstream's inflight_batcher_llm files, not a model configuration)"
                )
            raise PbtxtError(f"line {line}, column {pos - line_start + 1}: unexpected text {snippet!r}")
        kind = match.lastgroup or ""
        if kind == "newline":
            line, line_start = line + 1, match.end()
        elif kind not in ("space", "comment"):
            tokens.append(_Token(kind, match.group(), line, pos - line_start + 1))
        pos = match.end()
    tokens.append(_Token("end", "", line, pos - line_start + 1))
    return tokens


def _unescape(literal: str, token: _Token) -> str:
    """The value of one quoted literal: C escapes, octal and hex bytes, u and U escapes; UTF-8 overall."""
    body, out, i = literal[1:-1], bytearray(), 0
    while i < len(body):
        char = body[i]
        if char != "\\":
            out += char.encode("utf-8")
            i += 1
            continue
        nxt = body[i + 1]
        if nxt in _SIMPLE_ESCAPES:
            out += _SIMPLE_ESCAPES[nxt].encode("utf-8")
            i += 2
        elif nxt in "01234567":
            digits = re.match(r"[0-7]{1,3}", body[i + 1 :]).group()  # type: ignore[union-attr]
            out.append(int(digits, 8) & 0xFF)
            i += 1 + len(digits)
        elif nxt in "xX" and re.match(r"[0-9a-fA-F]", body[i + 2 : i + 3]):
            digits = re.match(r"[0-9a-fA-F]{1,2}", body[i + 2 :]).group()  # type: ignore[union-attr]
            out.append(int(digits, 16))
            i += 2 + len(digits)
        elif nxt in "uU":
            width = 4 if nxt == "u" else 8
            digits = body[i + 2 : i + 2 + width]
            if not re.fullmatch(rf"[0-9a-fA-F]{{{width}}}", digits):
                raise PbtxtError(f"{token.where()}: \\{nxt} needs {width} hex digits")
            out += chr(int(digits, 16)).encode("utf-8")
            i += 2 + width
        else:
            raise PbtxtError(f"{token.where()}: unknown escape \\{nxt} in a string")
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PbtxtError(f"{token.where()}: the string is not UTF-8 ({exc.reason})") from exc


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.pos = 0

    def peek(self) -> _Token:
        return self.tokens[self.pos]

    def take(self) -> _Token:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def message(self, closing: str | None, opened: _Token | None) -> dict[str, Any]:
        """Fields up to ``closing`` (or the end of the text for the top level)."""
        fields: dict[str, Any] = {}
        while True:
            token = self.peek()
            if token.kind == "end":
                if closing is not None and opened is not None:
                    raise PbtxtError(
                        f"{token.where()}: the text ends inside a message: {opened.text!r} opened at "
                        f"{opened.where()} is never closed (unbalanced braces)"
                    )
                return fields
            if token.kind == "punct" and token.text in "}>":
                if closing is None:
                    raise PbtxtError(f"{token.where()}: {token.text!r} without a matching opening brace")
                if token.text != closing:
                    raise PbtxtError(
                        f"{token.where()}: {token.text!r} closes {opened.text if opened else '?'!r} opened at "
                        f"{opened.where() if opened else '?'}"
                    )
                self.take()
                return fields
            if token.kind == "punct" and token.text == "]" and opened is not None:
                raise PbtxtError(
                    f"{token.where()}: ']' while {opened.text!r} opened at {opened.where()} is still open "
                    "(unbalanced braces)"
                )
            if token.kind != "ident":
                if token.kind == "punct" and token.text == "[":
                    raise PbtxtError(f"{token.where()}: extension or Any fields ([...]) are not supported")
                raise PbtxtError(f"{token.where()}: expected a field name, found {token.text!r}")
            name = self.take().text
            value = self.field_value(name)
            if name in fields:
                previous = fields[name]
                previous = previous if isinstance(previous, list) else [previous]
                fields[name] = previous + (value if isinstance(value, list) else [value])
            else:
                fields[name] = value
            if self.peek().kind == "punct" and self.peek().text in ",;":
                self.take()

    def field_value(self, name: str) -> Any:
        token = self.peek()
        colon = token.kind == "punct" and token.text == ":"
        if colon:
            self.take()
            token = self.peek()
        if token.kind == "punct" and token.text in "{<":
            self.take()
            return self.message("}" if token.text == "{" else ">", token)
        if token.kind == "punct" and token.text == "[":
            self.take()
            return self.list_value(name, token)
        if not colon:
            found = "the end of the text" if token.kind == "end" else repr(token.text)
            raise PbtxtError(f"{token.where()}: expected ':' or '{{' after field name {name!r}, found {found}")
        return self.scalar(name)

    def list_value(self, name: str, opened: _Token) -> list[Any]:
        items: list[Any] = []
        if self.peek().kind == "punct" and self.peek().text == "]":
            self.take()
            return items
        while True:
            token = self.peek()
            if token.kind == "punct" and token.text in "{<":
                self.take()
                items.append(self.message("}" if token.text == "{" else ">", token))
            elif token.kind == "end":
                raise PbtxtError(
                    f"{token.where()}: the text ends inside the list of {name!r} opened at {opened.where()}"
                )
            else:
                items.append(self.scalar(name))
            token = self.take()
            if token.kind == "punct" and token.text == "]":
                return items
            if not (token.kind == "punct" and token.text == ","):
                found = "the end of the text" if token.kind == "end" else repr(token.text)
                raise PbtxtError(
                    f"{token.where()}: expected ',' or ']' in the list of {name!r} opened at {opened.where()}, "
                    f"found {found}"
                )

    def scalar(self, name: str) -> Any:
        token = self.take()
        if token.kind == "string":
            text = _unescape(token.text, token)
            while self.peek().kind == "string":  # adjacent literals are one string
                follow = self.take()
                text += _unescape(follow.text, follow)
            return Quoted(text) if ENUM.match(text) else text
        if token.kind == "number":
            return _number(token)
        if token.kind == "punct" and token.text == "-" and self.peek().kind == "ident":
            word = self.take()
            if word.text.lower() in ("inf", "infinity"):
                return float("-inf")
            raise PbtxtError(f"{word.where()}: '-' before {word.text!r} in the value of {name!r}")
        if token.kind == "ident":
            if token.text in _TRUE:
                return True
            if token.text in _FALSE:
                return False
            if token.text.lower() in _FLOAT_WORDS:
                return _FLOAT_WORDS[token.text.lower()]
            return token.text if ENUM.match(token.text) else Bare(token.text)
        found = "the end of the text" if token.kind == "end" else repr(token.text)
        raise PbtxtError(f"{token.where()}: expected a value for {name!r}, found {found}")


def _number(token: _Token) -> int | float:
    text = token.text
    if re.fullmatch(r"-?0[xX][0-9a-fA-F]+", text):
        return int(text, 16)
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    return float(text.rstrip("fF"))


def _map_entries(value: Any) -> Any:
    """``parameters`` entries back into a mapping when every value is a ``string_value`` (as written)."""
    entries = value if isinstance(value, list) else [value]
    if all(
        isinstance(entry, dict)
        and set(entry) == {"key", "value"}
        and isinstance(entry["value"], dict)
        and set(entry["value"]) == {"string_value"}
        for entry in entries
    ):
        return {str(entry["key"]): str(entry["value"]["string_value"]) for entry in entries}
    return entries  # a list, so the writer keeps them as entries (a mapping would become string_value pairs)


def _maps(message: dict[str, Any]) -> dict[str, Any]:
    for name, value in message.items():
        if name == "parameters" and isinstance(value, (dict, list)) and value:
            message[name] = _map_entries(value)
        if isinstance(message[name], dict):
            _maps(message[name])
        elif isinstance(message[name], list):
            for item in message[name]:
                if isinstance(item, dict):
                    _maps(item)
    return message


def parse_pbtxt(text: str) -> dict[str, Any]:
    """config.pbtxt text as data (the shape ``to_pbtxt`` takes); ``PbtxtError`` names line and column."""
    if not isinstance(text, str):
        raise PbtxtError(f"config.pbtxt must be text, got {type(text).__name__}")
    return _maps(_Parser(text).message(None, None))


def validate_with_triton_schema(text: str) -> bool:
    """Parse ``text`` with Triton's ModelConfig protobuf when it is importable.

    Returns True when the text was checked, False when ``tritonclient``/``protobuf`` are not installed; raises
    ``PbtxtError`` with protobuf's message when Triton would refuse the text (an unknown field, a wrong type).
    """
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        return False
    try:
        text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise PbtxtError(f"Triton's ModelConfig schema refuses it: {exc}") from exc
    return True
