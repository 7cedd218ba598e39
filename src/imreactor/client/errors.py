"""The blocking client's errors: one class for every failed request, one for a refused login."""

from __future__ import annotations


class ClientError(RuntimeError):
    """A request failed: refused by the server, timed out, or the connection closed."""


class LoginRefused(ClientError):
    """The server refused the login; :attr:`result_code` says why (6: bad credentials)."""

    def __init__(self, result_code: int, result_string: str) -> None:
        super().__init__(f"login refused: {result_string or 'result ' + str(result_code)}")
        self.result_code = result_code
        self.result_string = result_string
