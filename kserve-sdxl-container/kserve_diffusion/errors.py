"""Exceptions the server maps to answers: bad input (400), startup problems, internal failures (500)."""

from kserve.errors import InvalidInput


class ConfigError(Exception):
    """A startup problem the operator must fix (bad flag value, missing model folder, ...)."""


class RequestError(InvalidInput):
    """Bad request input: HTTP 400 / gRPC INVALID_ARGUMENT with a message naming the field."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")


class RequestErrors(RequestError):
    """Several bad fields at once, reported together in one 400."""

    def __init__(self, messages: list[str]):
        InvalidInput.__init__(self, "; ".join(messages))


class GenerationFailed(RuntimeError):
    """An internal failure while generating: HTTP 500 with a short message, details in the log."""
