"""TLS for FTPS: contexts, certificate fingerprints, readable verification failures.

Two ways to trust a server (RELIABILITY 8):

* **Verified**: the certificate chains to an authority in the system's trust store
  (``ssl.create_default_context()``: ``/etc/ssl/certs``, or ``SSL_CERT_FILE``) and is
  valid for the configured host name.
* **Pinned**: the administrator confirmed the certificate's SHA-256 fingerprint after a
  connection test (a self-signed certificate, a private CA, a certificate for another
  name). The handshake then checks nothing but that fingerprint: the pinned certificate
  is trusted exactly, whatever its issuer, name or expiry; any other is refused.
"""

from __future__ import annotations

import hashlib
import re
import ssl

from destinations.backends.base import ConfError, Fingerprint

SETTING = "tls_fingerprint"
_HEX = re.compile(r"\A[0-9A-F]{64}\Z")
_PREFIX = re.compile(r"\A(sha-?256)(\s+fingerprint)?\s*[:=]\s*", re.IGNORECASE)


def verified_context() -> ssl.SSLContext:
    """System trust store, host name checked, TLS 1.2 or newer."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def pinning_context() -> ssl.SSLContext:
    """No chain or name check: the caller compares the certificate with the pin."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def format_fingerprint(digest: bytes) -> str:
    return ":".join(f"{b:02X}" for b in digest)


def sha256_fingerprint(der: bytes) -> str:
    """``AB:CD:…`` (as ``openssl x509 -fingerprint -sha256`` and browsers show it)."""
    return format_fingerprint(hashlib.sha256(der).digest())


def normalize_fingerprint(value: str, field: str = SETTING) -> str:
    """A pasted SHA-256 fingerprint in any usual spelling (colons, blanks, lower case,
    a ``SHA256:`` prefix) as ``AB:CD:…``; "" stays ""."""
    if not isinstance(value, str):
        raise ConfError("The certificate fingerprint must be text.", field)
    text = value.strip()
    if not text:
        return ""
    text = _PREFIX.sub("", text)
    hexdigits = re.sub(r"[\s:]", "", text).upper()
    if not _HEX.match(hexdigits):
        raise ConfError(
            "The certificate fingerprint must be a SHA-256 fingerprint: 64 hexadecimal digits "
            "(colons allowed), e.g. as the connection test shows it.",
            field,
        )
    return ":".join(hexdigits[i : i + 2] for i in range(0, 64, 2))


def describe_certificate(der: bytes) -> tuple[str, list[str]]:
    """A one-line, readable description (subject, issuer, validity) and the names the
    certificate is valid for."""
    from cryptography import x509

    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return "an unreadable certificate", []
    names: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [*san.get_values_for_type(x509.DNSName), *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))]
    except x509.ExtensionNotFound:
        pass
    subject = cert.subject.rfc4514_string() or "(no subject)"
    issuer = cert.issuer.rfc4514_string() or "(no issuer)"
    issued = "self-signed" if cert.issuer == cert.subject else f"issued by {issuer}"
    until = cert.not_valid_after_utc.strftime("%Y-%m-%d")
    parts = [subject, issued, f"valid until {until}"]
    if names:
        parts.append("for " + ", ".join(names[:5]) + (" …" if len(names) > 5 else ""))
    return "; ".join(parts), names


def certificate_fingerprint(der: bytes, *, trusted: bool) -> Fingerprint:
    description, _ = describe_certificate(der)
    return Fingerprint(
        kind="tls-certificate",
        value=sha256_fingerprint(der),
        setting=SETTING,
        description=description,
        trusted=trusted,
    )


def why_untrusted(exc: ssl.SSLCertVerificationError, host: str, der: bytes | None) -> str:
    """What a failed verification means, in words (OpenSSL's verify codes)."""
    code = getattr(exc, "verify_code", None)
    names = describe_certificate(der)[1] if der else []
    if code in (62, 64):  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
        valid_for = ", ".join(names[:5]) if names else "other names"
        return f"is valid for {valid_for}, not for {host}"
    if code in (18, 19):  # self-signed (leaf, or in the chain)
        return "is self-signed"
    if code in (2, 20, 21):  # unable to get (local) issuer certificate
        return "is issued by an authority this server does not trust (a private CA?)"
    if code == 10:
        return "has expired"
    if code == 9:
        return "is not valid yet"
    reason = getattr(exc, "verify_message", "") or "it could not be verified"
    return f"could not be verified ({reason})"
