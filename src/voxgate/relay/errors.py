"""bossDB-shaped HTTP errors: ``{"status", "code", "message"}`` with bossDB's codes."""

from __future__ import annotations

from starlette.responses import JSONResponse

__all__ = ["BossHTTPError", "boss_error", "drf_error"]

# bossDB error codes (boss/django/bosscore/error.py)
INVALID_URL = 1000
INVALID_CUTOUT_ARGS = 1001
TYPE_ERROR = 1002
INVALID_POST_ARGUMENT = 1003
INVALID_ARGUMENT = 1005
BAD_REQUEST = 1006
REQUEST_TOO_LARGE = 2000
DATATYPE_DOES_NOT_MATCH = 2001
DATA_DIMENSION_MISMATCH = 2002
DATATYPE_NOT_SUPPORTED = 2003
UNSUPPORTED_4D = 2005
INVALID_STATE = 2006
MISSING_PERMISSION = 3001
RESOURCE_NOT_FOUND = 4000
INTEGRITY_ERROR = 4003
OBJECT_NOT_FOUND = 4004
IO_ERROR = 5000
UNSUPPORTED_TRANSPORT_FORMAT = 5001
RESOURCE_EXISTS = 6002
UNHANDLED_EXCEPTION = 9002
UNSUPPORTED_VERSION = 9003


class BossHTTPError(Exception):
    """Raised inside a handler; the app turns it into the boss JSON error."""

    def __init__(self, status: int, code: int, message: str, *, drf: bool = False,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.drf = drf
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        if self.drf:
            return drf_error(self.status, self.message, self.headers)
        return boss_error(self.status, self.code, self.message, self.headers)


def boss_error(status: int, code: int, message: str,
               headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"status": status, "code": code, "message": message}, status_code=status,
                        headers=headers)


def drf_error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """Django REST framework's shape, which bossDB uses for authentication and media types."""
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def bad_request(code: int, message: str) -> BossHTTPError:
    return BossHTTPError(400, code, message)


def not_found(message: str, code: int = RESOURCE_NOT_FOUND) -> BossHTTPError:
    return BossHTTPError(404, code, message)
