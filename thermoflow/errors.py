"""Errors that cross layers."""


class ServiceError(RuntimeError):
    """A service that could not be started, found or reached; the message says what to do."""
