"""FTP failures as typed destination errors with readable messages.

Messages name the operation, the server and the FTP reply *code*, never the reply's
text: servers put their banner, software version and local paths into it. The text is
only inspected (a ``426`` that says "No space left on device" is a full disk, not a
network problem).
"""

from __future__ import annotations

import ftplib
import ssl

from destinations.backends.base import DestinationError, NotFoundError, PermanentError, TransientError
from destinations.backends.ftp.client import FtpReplyError, reply_code, reply_text

_NO_SPACE_WORDS = ("no space", "disk full", "quota", "insufficient storage", "exceeded storage")


def is_no_space(code: str, text: str) -> bool:
    return code in ("452", "552") or any(word in text.lower() for word in _NO_SPACE_WORDS)


def reply_error(exc: BaseException, what: str, host: str) -> DestinationError:
    code = reply_code(exc)
    text = reply_text(exc)
    server = f"While {what}, the FTP server {host}"
    tag = f" (FTP reply {code})" if code else ""
    if is_no_space(code, text):
        return PermanentError(f"{server} reported that no space is left or the quota is used up{tag}.")
    if code == "421":
        return TransientError(f"{server} closed the connection (busy, too many connections or timed out){tag}.")
    if code in ("425", "426"):
        return TransientError(f"{server} reported that the data connection failed{tag}.")
    if code in ("522", "534"):
        return PermanentError(
            f"{server} refused the encrypted data connection{tag}; it may require TLS session reuse or "
            "another TLS version."
        )
    if code == "530":
        return PermanentError(f"{server} said this user is not logged in or not allowed{tag}.")
    if code == "550":
        return PermanentError(f"{server} refused: permission denied, or the file or folder does not exist{tag}.")
    if code == "553":
        return PermanentError(f"{server} did not allow the file name{tag}.")
    if code in ("500", "501", "502", "504"):
        return PermanentError(f"{server} did not understand a command backupsite needs{tag}.")
    if code.startswith("4"):
        return TransientError(f"{server} reported a temporary failure{tag}.")
    if code.startswith("5"):
        return PermanentError(f"{server} refused{tag}.")
    return TransientError(f"{server} sent an unexpected reply{tag}.")


def ftp_error(exc: BaseException, what: str, host: str, timeout: float) -> DestinationError | None:
    """The mapper for :func:`~destinations.backends.base.mapped_errors`."""
    if isinstance(exc, FtpReplyError):
        return reply_error(exc, what, host)
    if isinstance(exc, TimeoutError):
        return TransientError(f"The FTP server {host} did not answer within {timeout:g} seconds while {what}.")
    if isinstance(exc, ssl.SSLCertVerificationError):  # (normally turned into a FingerprintError before)
        return PermanentError(f"The TLS certificate of {host} is not trusted.")
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError | EOFError | ConnectionError):
        return TransientError(f"The connection to {host} was lost while {what}.")
    if isinstance(exc, ssl.SSLError):
        reason = (exc.reason or "").replace("_", " ").lower()
        detail = f" ({reason})" if reason else ""
        return TransientError(f"The TLS connection to {host} failed while {what}{detail}.")
    if isinstance(exc, OSError):
        return TransientError(f"Network error with {host} while {what} ({exc.strerror or type(exc).__name__}).")
    if isinstance(exc, ftplib.Error):
        return TransientError(f"The FTP server {host} broke the protocol while {what}.")
    if isinstance(exc, UnicodeError):
        return PermanentError(f"The FTP server {host} sent text that is not UTF-8 while {what}.")
    if isinstance(exc, ValueError):  # a reply ftplib could not parse (a port that is no number...)
        return TransientError(f"The FTP server {host} sent a reply that could not be understood while {what}.")
    return None


def not_found(name: str) -> NotFoundError:
    return NotFoundError(f"{name} is not at this destination.")
