"""Logging: text for people, or one JSON object per line for log collectors (LOG_FORMAT).

Structured fields go in `extra={"fields": {...}}`; the JSON format puts them at the top
level of the line, the text format appends them as key=value.

Values can come from requests (a model name in the path, an id, an error message quoting
a URL): in the text format every control character is escaped, and the lines of a
traceback after its first are indented, so nothing a client sends can start a log line.
The JSON format escapes them by construction."""

from __future__ import annotations

import json
import logging
import re
import time

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_control(text: str) -> str:
    """`text` on one line: control characters (CR, LF, ESC, ...) as \\xNN or \\uNNNN."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.message = escape_control(record.getMessage())
        record.asctime = self.formatTime(record, self.datefmt)
        text = self.formatMessage(record)
        fields = getattr(record, "fields", None)
        if fields:
            text += " " + " ".join(f"{key}={escape_control(str(value))}" for key, value in fields.items())
        if record.exc_info:
            # Each line of the traceback indented: its last line quotes the exception's
            # message, which may hold a client's text.
            trace = self.formatException(record.exc_info)
            text += "\n" + "\n".join("    " + escape_control(line) for line in trace.splitlines())
        if record.stack_info:
            text += "\n" + "\n".join(
                "    " + line for line in self.formatStack(record.stack_info).splitlines()
            )
        return text


def configure_logging(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # httpx logs every image fetch with its full URL, query string (tokens) included.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
