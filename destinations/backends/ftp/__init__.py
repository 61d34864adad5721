"""FTP / FTPS destinations (explicit TLS by default). See :mod:`.backend` for the
contract, :mod:`.client` for the protocol (and why ftplib, not django-storages),
:mod:`.tls` for certificate trust. The form is in :mod:`.forms`, imported lazily
(``FtpBackend.form_class_path``): ``destinations.forms`` imports this registry."""

from destinations.backends.ftp.backend import FtpBackend, FtpConf, FtpSession

__all__ = ["FtpBackend", "FtpConf", "FtpSession"]
