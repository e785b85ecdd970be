"""The one exception the engine raises on purpose, with a machine-readable code.

Every failure a user can cause or fix (a bad image file, missing weights, no GPU, cancel) becomes an
`EngineError`; the CLI turns it into an `error` event (`--progress jsonl`) or one sentence on stderr,
never a traceback. Codes are part of the wire protocol (DESIGN.md): add, never rename.
"""

CODES = {
    "bad_image": "the input file cannot be read as an image",
    "bad_argument": "an option value is out of range or inconsistent",
    "weights_missing": "model weights are neither cached nor given, and cannot be downloaded",
    "weights_invalid": "a weights file exists but does not hold the expected model",
    "device_unavailable": "the requested device cannot be used",
    "out_of_memory": "the device ran out of memory",
    "cancelled": "the run was cancelled (stdin closed, SIGTERM, Ctrl-C or a cancel callback)",
    "internal": "a bug: anything not foreseen above",
}


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
