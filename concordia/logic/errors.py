"""Domain errors; the web layer maps each to one HTTP status."""

from __future__ import annotations


class DomainError(Exception):
    """Base: a request that cannot be carried out, with a message for the user."""

    status_code = 400

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


class NotFound(DomainError):
    status_code = 404


class Forbidden(DomainError):
    status_code = 403


class Conflict(DomainError):
    """The thing exists but its state forbids the action (e.g. killing a Done job)."""

    status_code = 409


class Unavailable(DomainError):
    """Something Concordia needs (a backend, IAM) does not answer now: nothing was changed."""

    status_code = 503


class TooLarge(DomainError):
    status_code = 413


class TooMany(DomainError):
    """A per-user limit would be exceeded: nothing was changed; wait, or end some first."""

    status_code = 429


class Invalid(DomainError):
    """Bad input; each problem names its field and rule, as FastAPI's own 422s do."""

    status_code = 422

    def __init__(self, field: str, message: str, location: str = "body") -> None:
        self.problems = [(location, field, message)]
        super().__init__(f"{field}: {message}")

    @classmethod
    def many(cls, problems: list[tuple[str, str]], location: str = "body") -> Invalid:
        error = cls(*problems[0], location=location)
        error.problems = [(location, field, message) for field, message in problems]
        return error
