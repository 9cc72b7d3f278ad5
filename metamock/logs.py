"""How metamock logs: text or JSON lines on stderr, metamock's loggers apart from the libraries'.

`configure(options)` is called once, by `metamock.cli.main`, before a command runs. It is
process-wide by nature (the root logger's handler), so it lives here and nowhere else:

- one stderr handler on the root logger, formatted as text or as one JSON object per line
  (`time`, `level`, `logger`, `message`, the record's extra fields, `exception` with the traceback);
- the `metamock` loggers at the level asked for (`-v` / `--log-level debug`), while the libraries
  (pyroute2, asyncio, aiohttp, botocore) stay at INFO unless `--debug-libraries` is given: their
  debug output (~40 netlink lines per apply) buries ours;
- `metamock.access` at INFO whatever the level: it only writes when `--access-log` asked for it;
- botocore at INFO at the lowest, always (`quiet_secret_loggers`, also one of
  metamock.runtime's process effects: its debug lines carry secrets).

Standard library only: a formatter of thirty lines does not justify a dependency.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from metamock.settings import LogOptions

__all__ = ["JsonFormatter", "configure", "quiet_secret_loggers"]

# At DEBUG botocore logs STS response bodies (the secret key, the token) and signed headers.
_SECRET_LOGGERS = ("botocore", "aiobotocore")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

# What every LogRecord carries; anything else on a record came as `extra=` and is a field.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in a traceback are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        created = record.created
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
            + f".{int(created % 1 * 1000):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_") and key not in out:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str)


def formatter(fmt: str) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)


def configure(options: LogOptions) -> None:
    """Set up logging for this process as `options` say (see the module docstring)."""
    level = LEVELS[options.level]
    root = logging.getLogger()
    if not root.handlers:  # as logging.basicConfig: a host (pytest, an embedding) keeps its own
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(formatter(options.format))
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if options.libraries else max(level, logging.INFO))
    logging.getLogger("metamock").setLevel(level)
    logging.getLogger("metamock.access").setLevel(logging.INFO)
    # Their own level decides for them: as quiet as the root at least (`--log-level error` too).
    quiet_secret_loggers(max(logging.INFO, root.level))


def quiet_secret_loggers(floor: int = logging.INFO) -> None:
    """botocore's and aiobotocore's loggers at `floor` (INFO) at the lowest; idempotent. Their own
    level is set (NOTSET too): a DEBUG root set later must not reach them."""
    for name in _SECRET_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level < floor:
            logger.setLevel(floor)
