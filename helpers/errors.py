"""Every error a learner can meet in the notebooks, under one base class, each message naming
the fix.

Each class also keeps the built-in base it had (``except PermissionError`` still catches
``NotYourSession``), so code written against the built-ins keeps working.
"""

from __future__ import annotations


class TutorialError(Exception):
    """Base class of the errors raised by the helpers."""


# Running the runtime


class RuntimeNotFound(TutorialError, RuntimeError):
    """No Copilot runtime binary could be found."""


class RuntimeStartError(TutorialError, RuntimeError):
    """The runtime did not start; the message quotes the end of its log."""


class RuntimeGone(TutorialError, RuntimeError):
    """The runtime's connection closed: it stopped, crashed or was killed."""


class RuntimeUnreachable(TutorialError, RuntimeError):
    """Nothing at the URL completed the runtime's handshake within the start timeout."""


class TmpNotWritable(TutorialError, OSError):
    """The folder where runs keep their files cannot be written."""


# The model


class BackendError(TutorialError, RuntimeError):
    """The chosen backend cannot be used as configured."""


# Parameters and tools


class ParameterError(TutorialError, ValueError):
    """One or more parameters have values the notebook cannot use."""


class VfsError(TutorialError, ValueError):
    """A refused operation; the message is written to be shown to the model."""


class NoReply(TutorialError, RuntimeError):
    """The turn ended without an assistant message."""


# Serving many users


class NotYourSession(TutorialError, PermissionError):
    """The session id is unknown, or belongs to another user: refused before anything ran."""


class NoTokenForUser(TutorialError, LookupError):
    """The application holds no GitHub token for this user."""


class PoolClosed(TutorialError, RuntimeError):
    """The pool was closed; it serves no more requests."""


class Draining(TutorialError, RuntimeError):
    """The application is shutting down and takes no new requests."""


# Session state in a database


class StoreError(TutorialError, RuntimeError):
    """The session store cannot be used as configured."""


class LeaseBusy(TutorialError, RuntimeError):
    """Another holder kept the session's lease for longer than we were willing to wait."""


class LeaseExpired(TutorialError, RuntimeError):
    """Our lease ran out (and may have passed to another holder) before we released it."""


class WriteRefused(LeaseExpired):
    """The store refused a session write: its token no longer holds the lease, or the session
    was deleted. The runtime sees the error; the request reports ``LeaseExpired``."""


# A web backend


class TooManyTurns(TutorialError, RuntimeError):
    """This user already has as many turns running as the service allows at once."""


class RuntimeDown(TutorialError, RuntimeError):
    """The service's Copilot runtime is not answering; requests that need it get 503."""


class StoreDown(TutorialError, RuntimeError):
    """The service's database did not answer; a turn it could not store is not reported done."""


class NotStored(TutorialError, RuntimeError):
    """A turn ended, but its events are not where they should be in the store: not done."""


class Refused(TutorialError, RuntimeError):
    """A turn refused before it starts (HTTP 429): ``code`` names why, ``retry_after_s`` when
    waiting helps, ``detail`` what the caller may read (budget, limit, when it resets)."""

    def __init__(
        self, code: str, message: str, retry_after_s: float, detail: dict | None = None
    ) -> None:
        super().__init__(message)
        self.code, self.retry_after_s, self.detail = code, retry_after_s, dict(detail or {})
