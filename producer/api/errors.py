"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`, with the HTTP status the
official client maps to its exception classes (401 AuthenticationError, 404 NotFoundError, ...)."""

from __future__ import annotations

from starlette.responses import JSONResponse


class ApiError(Exception):
    """A request the API refuses; `response()` is what the client receives."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def response(self) -> JSONResponse:
        kind = "server_error" if self.status >= 500 else "invalid_request_error"
        body = {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}
        headers = {"WWW-Authenticate": 'Bearer realm="vlmbatch"'} if self.status == 401 else None
        return JSONResponse(body, status_code=self.status, headers=headers)


def not_found(kind: str, public_id: str) -> ApiError:
    return ApiError(404, f"No such {kind}: '{public_id}'", param="id", code="not_found")
