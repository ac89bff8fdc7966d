"""TLS to the broker: the client context, and which TLS failures no retry can fix.

Only the standard library's :mod:`ssl`. The bus hands the context to paho; a certificate the
broker does not trust, or a broker certificate edged does not trust, fails the same way on every
attempt, so :func:`refusal` tells the bus to stop instead of retrying.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}

# OpenSSL reasons that mean "this certificate or this TLS setup is not accepted": the same on every attempt.
# The broker's alerts about edged's certificate arrive as *ALERT* reasons (with TLS 1.3 only when edged
# first reads, after its side of the handshake has finished).
_FATAL_REASONS = {
    "TLSV1_ALERT_UNKNOWN_CA": "the broker does not trust the CA that signed edged's certificate",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the broker rejected edged's certificate",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the broker says edged's certificate has expired",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "the broker says edged's certificate is revoked",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the broker rejected edged's certificate",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "the broker does not support edged's certificate",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the broker requires a client certificate (mqtt.tls.cert_file)",
    "TLSV1_ALERT_ACCESS_DENIED": "the broker denied access",
    "TLSV1_ALERT_PROTOCOL_VERSION": "no TLS version in common with the broker (mqtt.tls.min_version)",
    "UNSUPPORTED_PROTOCOL": "no TLS version in common with the broker (mqtt.tls.min_version)",
    "NO_PROTOCOLS_AVAILABLE": "no TLS version in common with the broker (mqtt.tls.min_version)",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "the broker refused the TLS handshake (version, ciphers or certificate)",
    "WRONG_VERSION_NUMBER": "the broker did not answer with TLS: is mqtt.port its TLS listener?",
}


def client_context(
    *,
    ca_file: Path | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    min_version: str = "1.2",
) -> ssl.SSLContext:
    """Verify the broker (its certificate must name the host edged connects to) against ``ca_file``
    or the system's trust store; present ``cert_file``/``key_file`` when given; TLS ``min_version`` or newer.

    Raises ``OSError`` for an unreadable file, ``ssl.SSLError`` for a bad certificate or key and
    ``ValueError`` for an encrypted key (OpenSSL would otherwise ask for its passphrase on the terminal).
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file) if ca_file else None)
    context.minimum_version = VERSIONS[min_version]
    if cert_file is not None:
        context.load_cert_chain(str(cert_file), str(key_file) if key_file else None, password=_no_passphrase)
    return context


def _no_passphrase() -> bytes:
    raise ValueError("the key file is encrypted: edged needs an unencrypted key, readable by edged only")


def refusal(exc: BaseException) -> str | None:
    """Why no retry can succeed after ``exc``, for a TLS failure of that kind; ``None`` when it may be transient."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"the broker's certificate is not trusted: {getattr(exc, 'verify_message', None) or exc}"
    if isinstance(exc, ssl.SSLError) and not isinstance(exc, (ssl.SSLWantReadError, ssl.SSLWantWriteError)):
        return _FATAL_REASONS.get(getattr(exc, "reason", None) or "")
    return None


def report_errors(context: ssl.SSLContext, report: Callable[[ssl.SSLError], None]) -> None:
    """Pass every TLS error on sockets made from ``context`` to ``report`` before it is raised.

    paho catches errors on reads and turns them into a lost connection; this is how edged still sees
    the broker's alert about its certificate, which TLS 1.3 delivers on the first read.
    """

    class ReportingSocket(ssl.SSLSocket):
        def do_handshake(self, block: bool = False) -> None:
            try:
                super().do_handshake(block)
            except ssl.SSLError as exc:
                report(exc)
                raise

        def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
            try:
                return super().recv(buflen, flags)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                raise
            except ssl.SSLError as exc:
                report(exc)
                raise

    context.sslsocket_class = ReportingSocket
