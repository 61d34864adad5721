"""Windows share (SMB 2/3): ``conf`` (settings), ``client`` (one connection on
smbprotocol's low-level API: timeouts, no guest sessions, pipelined writes),
``backend`` (the backend and its file-tree session), ``forms`` (the form)."""

from destinations.backends.smb.backend import SmbBackend, SmbSession
from destinations.backends.smb.conf import SmbConf

__all__ = ["SmbBackend", "SmbConf", "SmbSession"]
