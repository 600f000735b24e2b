"""Mutual TLS between a shard's validators, pinned to the node keys in genesis.

No outside certificate authority takes part. Each validator's certificate is
self-signed, and its subject public key **is** the validator's Ed25519 node key:
the same key that signs votes and the peer handshake. Genesis lists the certificate
beside the node key, and a node trusts exactly the certificates of its shard's
validators, so a TLS connection either ends at a genesis validator or does not open.

Why Ed25519 in the certificate itself, and no separate TLS key: OpenSSL 3 (what
Python's ``ssl`` links here: 3.0.19) negotiates Ed25519 certificates in TLS 1.3 for
both sides, also with ``VERIFY_X509_STRICT``; a measured mutual handshake on loopback
took about 1.3 ms, the same as with ECDSA P-256. A single key means one thing to
keep, one thing to list in genesis, and nothing to bind: the certificate's key and
the handshake key are compared byte for byte. (The fallback we would otherwise need,
an ECDSA key whose certificate is signed by the node key, adds a second secret and a
binding to check, and buys nothing.)

The certificate is deterministic: from the node key and a name, ``make_node_certificate``
always produces the same bytes (fixed serial derived from the key, fixed validity,
Ed25519 signatures are deterministic). So the key file stays the only secret: the
certificate can be re-derived and compared with genesis at start, and the private key
PEM needs never be written to disk. Validity runs to 9999-12-31 (RFC 5280 4.1.2.5,
"no well-defined expiration"): trust comes from genesis, and a validator replaces its
key and certificate through a validator-set change, not on a date printed in a file.

Every pinned certificate is a leaf (``BasicConstraints ca=false``), so OpenSSL refuses
any certificate *issued* by a validator's key: a validator cannot vouch for someone
else. Session tickets are off, so every connection runs a full handshake with
certificates (no resumption to reason about).

Browsers do not accept Ed25519 certificates; the public API's HTTPS context takes any
certificate and key (an operator may use one from a public CA) and also works with the
node certificate for the SDK and command-line clients, which pin it.
"""

from __future__ import annotations

import datetime
import os
import ssl
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ledger.crypto import PUBLIC_KEY_LEN, PrivateKey, tagged_hash

__all__ = [
    "PeerTls",
    "TlsError",
    "api_server_context",
    "check_node_certificate",
    "client_context",
    "make_node_certificate",
    "node_key_of_certificate",
    "peer_certificate_key",
    "server_context",
]

# The longest common name X.509 allows (RFC 5280, ub-common-name).
MAX_NAME_LEN = 64

_NOT_BEFORE = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
_NOT_AFTER = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)


class TlsError(ValueError):
    """A certificate or key is malformed, is not a gridledger node certificate, or
    does not belong to the node key it is listed with."""


# ---------------------------------------------------------------- certificates


def _ed25519_key(key: PrivateKey) -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.from_private_bytes(key.seed)


def make_node_certificate(key: PrivateKey, name: str) -> tuple[bytes, bytes]:
    """A self-signed certificate for ``key`` and its private key, both PEM.

    The certificate's subject key is the node's Ed25519 key and its common name is
    ``name`` (a validator's label, 1..64 printable characters). The result depends
    only on the key and the name. ``key_pem`` holds the secret seed: use it in memory
    (the TLS context builders take it) and never store it; the keystore is where the
    seed lives. Raises :class:`TlsError` for an unusable name.
    """
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_LEN or not name.isprintable():
        raise TlsError(f"a node certificate's name is 1..{MAX_NAME_LEN} printable characters, got {name!r}")
    sk = _ed25519_key(key)
    public = sk.public_key()
    node_key = key.public_key.raw
    # A positive serial of at most 20 octets (RFC 5280 4.1.2.2), fixed per key so the
    # certificate is reproducible; 120 bits from a tagged hash of the key.
    serial = int.from_bytes(tagged_hash(b"gridledger/node-certificate-serial", node_key)[:15], "big") | 1
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(serial)
        .not_valid_before(_NOT_BEFORE)
        .not_valid_after(_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(sk, algorithm=None)
    )
    return certificate.public_bytes(serialization.Encoding.PEM), _private_key_pem(key)


def _private_key_pem(key: PrivateKey) -> bytes:
    return _ed25519_key(key).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_certificate(data: bytes) -> x509.Certificate:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TlsError(f"a certificate is PEM or DER bytes, got {type(data).__name__}")
    data = bytes(data)
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise TlsError(f"not an X.509 certificate in PEM or DER form: {exc}") from None


def node_key_of_certificate(certificate: bytes) -> bytes:
    """The 32-byte Ed25519 node key a certificate (PEM or DER) carries.

    Raises :class:`TlsError` when the input is no certificate or its key is not Ed25519.
    This reads the key only; :func:`check_node_certificate` checks the whole certificate.
    """
    public = _load_certificate(certificate).public_key()
    if not isinstance(public, ed25519.Ed25519PublicKey):
        raise TlsError(
            f"a node certificate carries an Ed25519 key, this one carries {type(public).__name__}"
        )
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def check_node_certificate(certificate: bytes, node_key: bytes) -> None:
    """Check that ``certificate`` is a gridledger node certificate for exactly ``node_key``.

    Genesis loading calls this for every validator, and :class:`PeerTls` for every
    certificate it pins. Raises :class:`TlsError` unless the certificate's key equals
    ``node_key``, it is self-signed by that key with a valid signature, and it is a
    leaf (not a CA), so pinning it trusts that one key and nothing it might sign.
    """
    if not isinstance(node_key, bytes) or len(node_key) != PUBLIC_KEY_LEN:
        raise TlsError(f"a node key is {PUBLIC_KEY_LEN} bytes")
    cert = _load_certificate(certificate)
    found = node_key_of_certificate(certificate)
    if found != node_key:
        raise TlsError(
            f"the certificate belongs to node key {found.hex()}, not to {node_key.hex()} it is listed with"
        )
    if cert.issuer != cert.subject:
        raise TlsError("a node certificate is self-signed: its issuer must equal its subject")
    try:
        cert.public_key().verify(cert.signature, cert.tbs_certificate_bytes)
    except InvalidSignature:
        raise TlsError("the certificate's self-signature does not verify with its own key") from None
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise TlsError("a node certificate must say it is no CA (BasicConstraints ca=false)") from None
    if constraints.ca:
        raise TlsError("a node certificate must not be a CA certificate")


def peer_certificate_key(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> bytes | None:
    """The node key of the certificate the other side of a TLS connection presented.

    ``None`` when the connection is not TLS or the peer sent no certificate. Raises
    :class:`TlsError` when the certificate carries no Ed25519 key.
    """
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    return node_key_of_certificate(der)


# ---------------------------------------------------------------- contexts


def _load_cert_chain(context: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    """Load a certificate and key held in memory (``ssl`` only reads them from paths).

    On Linux the PEM goes into an anonymous memory file, so the private key never
    touches a file system; elsewhere into a private temporary directory, removed at once.
    """
    blob = bytes(cert_pem) + b"\n" + bytes(key_pem)
    try:
        if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
            fd = os.memfd_create("gridledger-tls", 0)
            try:
                os.write(fd, blob)
                context.load_cert_chain(f"/proc/self/fd/{fd}")
            finally:
                os.close(fd)
            return
        with tempfile.TemporaryDirectory(prefix="gridledger-tls-") as tmp:
            path = os.path.join(tmp, "node.pem")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
            context.load_cert_chain(path)
    except ssl.SSLError as exc:
        raise TlsError(f"the certificate and key do not load or do not match: {exc}") from None


def _pin(context: ssl.SSLContext, trusted: Iterable[bytes]) -> int:
    count = 0
    for certificate in trusted:
        cert = _load_certificate(certificate)
        check_node_certificate(certificate, node_key_of_certificate(certificate))
        context.load_verify_locations(cadata=cert.public_bytes(serialization.Encoding.DER))
        count += 1
    return count


def _peer_context(purpose: int, cert_pem: bytes, key_pem: bytes, trusted: Iterable[bytes]) -> ssl.SSLContext:
    context = ssl.SSLContext(purpose)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    _load_cert_chain(context, cert_pem, key_pem)
    if _pin(context, trusted) == 0:
        raise TlsError("no certificate to trust: pin at least the shard's other validators")
    return context


def server_context(
    cert_pem: bytes,
    key_pem: bytes,
    trusted: Iterable[bytes],
    *,
    require_client_certificate: bool = True,
) -> ssl.SSLContext:
    """A TLS 1.3 server context that accepts only clients holding a pinned certificate.

    ``trusted`` are the certificates of the shard's validators (from genesis), each
    checked with :func:`check_node_certificate`. With ``require_client_certificate``
    false the context also admits clients without a certificate (a client that shows
    an unpinned one is still refused): use that only when the peer route shares a port
    with the public API; the peer route then insists on a pinned certificate itself.
    """
    context = _peer_context(ssl.PROTOCOL_TLS_SERVER, cert_pem, key_pem, trusted)
    context.verify_mode = ssl.CERT_REQUIRED if require_client_certificate else ssl.CERT_OPTIONAL
    context.options |= ssl.OP_NO_TICKET
    context.num_tickets = 0
    return context


def client_context(cert_pem: bytes, key_pem: bytes, trusted: Iterable[bytes]) -> ssl.SSLContext:
    """A TLS 1.3 client context that presents our certificate and accepts only pinned servers.

    Host names are not checked: peers are named by key, not by DNS, and addresses may
    be bare IPs. The transport compares the server certificate's key with the key it
    meant to reach after the TLS handshake.
    """
    context = _peer_context(ssl.PROTOCOL_TLS_CLIENT, cert_pem, key_pem, trusted)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def api_server_context(cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """A server context for the public HTTPS API: TLS 1.2 or newer, no client certificates.

    Any certificate and key work: the node certificate (clients pin it) or an
    operator's certificate from a CA browsers trust (browsers refuse Ed25519).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_cert_chain(context, cert_pem, key_pem)
    context.verify_mode = ssl.CERT_NONE
    return context


@dataclass(frozen=True)
class PeerTls:
    """The TLS side of one validator's peer transport: its two contexts and its certificate key.

    Build it with :meth:`for_validator`. ``server`` is what a listening site uses,
    ``client`` what the dialer uses, and ``certificate_key`` (our node key) enters the
    handshake transcript. :meth:`trust` pins more certificates when validators join;
    OpenSSL cannot forget a pinned certificate, so a validator that leaves is refused
    by the handshake instead (its key is no longer allowed).
    """

    server: ssl.SSLContext
    client: ssl.SSLContext
    certificate_key: bytes

    @classmethod
    def for_validator(
        cls,
        key: PrivateKey,
        certificate: bytes,
        trusted: Mapping[bytes, bytes],
        *,
        require_client_certificate: bool = True,
    ) -> PeerTls:
        """Contexts for the validator holding ``key`` whose genesis certificate is ``certificate``.

        ``trusted`` maps each validator's node key to its genesis certificate; every
        pair is checked with :func:`check_node_certificate`, and ours must match ``key``.
        Raises :class:`TlsError` on any mismatch.
        """
        check_node_certificate(certificate, key.public_key.raw)
        for node_key, cert in trusted.items():
            check_node_certificate(cert, node_key)
        # Our key's PEM is derived here and lives on only inside the two contexts.
        key_pem = _private_key_pem(key)
        pins = list(trusted.values())
        return cls(
            server=server_context(
                certificate, key_pem, pins, require_client_certificate=require_client_certificate
            ),
            client=client_context(certificate, key_pem, pins),
            certificate_key=key.public_key.raw,
        )

    def trust(self, trusted: Mapping[bytes, bytes]) -> None:
        """Pin more validators' certificates (node key -> certificate) on both contexts."""
        for node_key, cert in trusted.items():
            check_node_certificate(cert, node_key)
        pins = list(trusted.values())
        _pin(self.server, pins)
        _pin(self.client, pins)
