"""The one exception a host client raises."""

from __future__ import annotations

__all__ = ["HostApiError"]


class HostApiError(Exception):
    """A host API call failed: the hub's status, error code and sentence.

    Every failure is one of these, so a host app catches one type:

    - the hub refused the call: its status and error code (``unknown_user``,
      ``unknown_platform``, ``bad_request``, ``unauthorized``, ...) and its sentence;
    - 422 ``bad_request`` before anything is sent, for arguments the hub would refuse;
    - 503 ``unreachable``: no connection to the hub could be made (refused, DNS, TLS, a
      connect timeout) or the client is closed: the call was not sent, so not applied;
    - 502 ``interrupted``: the connection broke after the call was sent (reset, closed
      without an answer): the call may have been applied;
    - 504 ``timeout``: the hub did not answer within the client's timeout: the call may
      have been applied;
    - ``bad_answer``: the answer is not what this client expects (not a hub, or a hub of
      another version).

    After ``interrupted`` or ``timeout``, read (``state``, ``sessions``, ``platforms``)
    before retrying a change that is not idempotent (``add_platform``, ``mint_session``).
    ``reason`` is the hub's finer reason when it gave one (``api_key`` for a missing or
    wrong API key, ``reason`` for a bad revocation reason).
    """

    def __init__(
        self, status: int, code: str | None, message: str | None, reason: str | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.reason = status, code, message, reason
