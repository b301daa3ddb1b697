"""The text log: nothing a client sends can start a line."""

from __future__ import annotations

import json
import logging

from app.logs import JsonFormatter, TextFormatter, escape_control


def _record(message, *args, fields=None, exc_info=None):
    record = logging.LogRecord("app.access", logging.INFO, __file__, 1, message, args, exc_info)
    if fields:
        record.fields = fields
    return record


def test_control_characters_are_escaped_in_messages_and_fields():
    text = TextFormatter().format(
        _record("id %s", "abc\r\nFORGED 2026 INFO x", fields={"model": "m\nFORGED", "n": 3})
    )
    assert "\n" not in text and "\r" not in text
    assert text.endswith("id abc\\r\\nFORGED 2026 INFO x model=m\\nFORGED n=3")
    assert (
        escape_control("bell\x07 esc\x1b[31m nel\x85 ls\u2028 ok é")
        == "bell\\x07 esc\\x1b[31m nel\\x85 ls\\u2028 ok é"
    )


def test_traceback_lines_are_indented_and_escaped():
    try:
        raise ValueError("bad\nFORGED line")
    except ValueError:
        import sys

        text = TextFormatter().format(_record("failed", exc_info=sys.exc_info()))
    first, *rest = text.split("\n")
    assert first.endswith("failed") and rest
    assert all(line.startswith("    ") for line in rest)


def test_json_lines_stay_one_object_per_line():
    line = JsonFormatter().format(_record("id %s", "a\nb", fields={"model": "m\r\nx"}))
    assert "\n" not in line and json.loads(line)["model"] == "m\r\nx"
