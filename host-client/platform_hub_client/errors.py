"""The one exception a host client raises."""

from __future__ import annotations

__all__ = ["HostApiError"]


class HostApiError(Exception):
    """A host API call failed: the hub's status, error code and sentence.

    Every failure is one of these, so a host app catches one type:

    - the hub refused the call: its status and error code (``unknown_user``,
      ``unknown_platform``, ``bad_request``, ``unauthorized``, ...) and its sentence;
    - 422 ``bad_request`` before anything is sent, for arguments the hub would refuse;
    - 503 ``unreachable``: the hub cannot be reached (refused, reset, DNS, TLS), so the
      call was not applied;
    - 504 ``timeout``: the hub did not answer within the client's timeout; the call may
      have been applied, so read (``state``, ``sessions``) before retrying a change that
      is not idempotent;
    - ``bad_answer``: the answer is not what this client expects (not a hub, or a hub of
      another version).
    """

    def __init__(self, status: int, code: str | None, message: str | None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message
