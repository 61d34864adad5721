"""The Windows share destination: the backend and its file-tree session."""

from __future__ import annotations

import contextlib
from typing import ClassVar

from django.utils.translation import gettext_lazy as _
from smbprotocol.exceptions import SMBResponseException
from smbprotocol.header import NtStatus
from smbprotocol.open import CreateDisposition, CreateOptions, FilePipePrinterAccessMask, ShareAccess

from destinations import netguard
from destinations.backends.base import (
    ALL_CAPABILITIES,
    OLD_SUFFIX,
    Backend,
    FileTreeSession,
    NotFoundError,
    PermanentError,
    RemoteFile,
    TestResult,
)
from destinations.backends.smb.client import FLUSH_EVERY, SmbClient
from destinations.backends.smb.conf import SmbConf

# Answers meaning "this server cannot rename over an existing file" (then: the swap).
_NO_REPLACE = {NtStatus.STATUS_NOT_SUPPORTED, NtStatus.STATUS_INVALID_PARAMETER, NtStatus.STATUS_OBJECT_NAME_COLLISION}


class SmbSession(FileTreeSession):
    """One logged-in connection to the share; paths are relative to the share root,
    with backslashes (``office\\backupsite\\job\\file``)."""

    rename_replaces = True  # SET_INFO FileRenameInformation with ReplaceIfExists

    def __init__(self, backend: SmbBackend, client: SmbClient) -> None:
        super().__init__(backend)
        self.client = client
        self.conf: SmbConf = backend.conf
        self._base = self.conf.path.split("/") if self.conf.path else []
        self._made: set[str] = set()
        self._replacing = False
        self.flush_every = FLUSH_EVERY if backend.durable_writes else 0

    def __repr__(self) -> str:
        return f"<SmbSession {self.conf.unc}>"

    def close(self) -> None:
        self.client.close()

    # --- primitives -------------------------------------------------------------------
    def path(self, folder, name=None):
        parts = [*self._base, *(folder.split("/") if folder else [])]
        if name is not None:
            parts.append(name)
        return "\\".join(parts)

    def _makedirs(self, folder_path):
        parts = folder_path.split("\\") if folder_path else []
        for i in range(len(self._base) + 1, len(parts) + 1):  # the base folder exists (checked at login)
            path = "\\".join(parts[:i])
            if path in self._made:
                continue
            with self.client.errors("creating the folder"):
                entry = self.client.stat(path)
                if entry is None:
                    self.client.mkdir(path)
                elif not entry.is_dir:
                    raise PermanentError(f"A file named “{parts[i - 1]}” is in the way of the folder.")
            self._made.add(path)

    def _write(self, source, remote_path):
        what = f"writing {_display(remote_path)}"
        with self.client.errors(what):
            handle = self.client.create(
                remote_path,
                access=FilePipePrinterAccessMask.FILE_WRITE_DATA
                | FilePipePrinterAccessMask.FILE_READ_ATTRIBUTES
                | FilePipePrinterAccessMask.DELETE,
                disposition=CreateDisposition.FILE_CREATE,
                options=CreateOptions.FILE_NON_DIRECTORY_FILE | CreateOptions.FILE_SEQUENTIAL_ONLY,
                share_access=ShareAccess.FILE_SHARE_READ,
                what=what,
            )
            try:
                self.client.write_from(handle, source, what=what, flush_every=self.flush_every)
                if self.backend.durable_writes:
                    # Ask the server to put the data on its disk before the rename makes
                    # it look complete (Samba: fsync, with "strict sync", its default).
                    self.client.flush(handle, what=what)
            finally:
                with contextlib.suppress(Exception):
                    self.client.close_handle(handle)

    def _size(self, remote_path):
        with self.client.errors("looking for a file"):
            entry = self.client.stat(remote_path)
        if entry is None or entry.is_dir or entry.is_link:
            return None
        return entry.size

    def upload(self, *args, replace=False, **kwargs):
        self._replacing = replace
        try:
            return super().upload(*args, replace=replace, **kwargs)
        finally:
            self._replacing = False

    def _rename(self, src, dst):
        with self.client.errors("renaming the uploaded file"):
            if not self._replacing:
                self.client.rename(src, dst, replace=False)
                return
            try:
                self.client.rename(src, dst, replace=True)
            except SMBResponseException as exc:
                if exc.status not in _NO_REPLACE:
                    raise
                self._swap(src, dst)

    def _swap(self, src: str, dst: str) -> None:
        """For servers that cannot rename over a file: the old one stays until the new
        one is complete, then they are swapped and the old one goes."""
        folder, _, name = dst.rpartition("\\")
        old = f"{folder}\\.{name}{OLD_SUFFIX}" if folder else f".{name}{OLD_SUFFIX}"
        self.client.delete(old)
        self.client.rename(dst, old, replace=False)
        try:
            self.client.rename(src, dst, replace=False)
        except BaseException:
            with contextlib.suppress(Exception):
                self.client.rename(old, dst, replace=False)
            raise
        self.client.delete(old)

    def _remove(self, remote_path):
        with self.client.errors(f"deleting {_display(remote_path)}"):
            self.client.delete(remote_path)

    def _listdir(self, folder_path):
        with self.client.errors("listing the folder"):
            entries = self.client.listdir(folder_path)
        if entries is None:
            return []
        files = [RemoteFile(e.name, e.size, e.modified) for e in entries if not (e.is_dir or e.is_link)]
        return sorted(files, key=lambda f: f.name)

    def _open(self, remote_path, offset):
        with self.client.errors(f"reading {_display(remote_path)}"):
            return self.client.reader(remote_path, offset)

    def free_space(self):
        with self.client.errors("asking for the free space"):
            return self.client.free_space(self.path(""))

    def check_base(self) -> None:
        """The folder inside the share must exist (a typo must not create a new tree)."""
        if not self._base:
            return
        with self.client.errors("looking for the folder"):
            entry = self.client.stat(self.path(""))
        if entry is None or not entry.is_dir:
            raise NotFoundError(
                f"The folder “{self.conf.path}” does not exist in the share “{self.conf.share}”; create it there first."
            )


def _display(remote_path: str) -> str:
    return remote_path.rsplit("\\", 1)[-1].removeprefix(".").removesuffix(".partial")


class SmbBackend(Backend):
    kind = "smb"
    label = _("Windows share")
    conf_class = SmbConf
    secret_fields = ("password",)
    capabilities = ALL_CAPABILITIES
    form_class_path = "destinations.backends.smb.forms.SmbForm"
    help_text = _("A shared folder on a Windows server or a NAS (SMB 2 or 3), e.g. \\\\nas\\backups.")

    #: The SMB dialect to insist on (None: the newest both sides speak). Tests pin it.
    dialect: ClassVar[int | None] = None
    #: Build WRITE requests without smbprotocol's structures (see ``client``). Tests turn it off.
    fast_writes: ClassVar[bool] = True
    #: Hash and read in the caller's thread while another one sends (see ``client``).
    threaded_writes: ClassVar[bool] = True
    #: FLUSH uploads to the server's disk before the rename (the bench turns it off to
    #: show what durability costs; nothing else should).
    durable_writes: ClassVar[bool] = True

    @classmethod
    def describe_conf(cls, conf: SmbConf) -> str:
        port = f" (port {conf.port})" if conf.port != 445 else ""
        return f"{cls.label}: {conf.unc}{port} as {conf.user}"

    def describe_folder(self, folder: str) -> str:
        unc = self.conf.unc
        return unc + ("\\" + folder.replace("/", "\\") if folder else "")

    def session(self) -> SmbSession:
        password = self._secrets.get("password") or ""
        if not password and self.conf.auth != "kerberos":
            raise PermanentError("No password is stored for this Windows share.")
        target = netguard.resolve(self.conf.host, self.conf.port, timeout=self.timeout)
        client = SmbClient(
            target,
            share=self.conf.share,
            user=self.conf.user,
            password=password,
            auth=self.conf.auth,
            encrypt=self.conf.encrypt,
            timeout=self.timeout,
            dialect=self.dialect,
            fast_writes=self.fast_writes,
        )
        client.threaded_writes = self.threaded_writes
        client.connect()
        session = SmbSession(self, client)
        try:
            session.check_base()
        except BaseException:
            session.close()
            raise
        return session

    def _probe(self, session, folder) -> TestResult:
        result = super()._probe(session, folder)
        if isinstance(session, SmbSession):
            result.details.extend(session.client.session_facts())
        return result
