"""The one exception the engine raises on purpose, with a machine-readable code.

Every failure a user can cause or fix (a bad image file, missing weights, no GPU, cancel) becomes an
`EngineError`; the CLI turns it into an `error` event (`--progress jsonl`) or one sentence on stderr,
never a traceback. Codes are part of the wire protocol (DESIGN.md): add, never rename.
"""

from .wire import ERROR_CODES as CODES  # the codes are part of the wire: defined once, there


class EngineError(Exception):
    """An error with a `code` from CODES and a sentence a designer can act on."""

    def __init__(self, code: str, message: str):
        if code not in CODES:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message

    def to_event(self) -> dict:
        return {"event": "error", "code": self.code, "message": self.message}


class Cancelled(EngineError):
    def __init__(self, message: str = "Cancelled."):
        super().__init__("cancelled", message)
