"""Node certificates and the pinned mutual-TLS contexts (node/tls.py), over real loopback sockets."""

import datetime
import socket
import ssl
import tempfile
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from ledger.crypto import PrivateKey
from node.tls import (
    PeerTls,
    TlsError,
    api_server_context,
    check_node_certificate,
    client_context,
    make_node_certificate,
    node_key_of_certificate,
    peer_certificate_key,
    server_context,
)

KEYS = [PrivateKey(bytes([i + 1]) * 32) for i in range(3)]
A, B, OUTSIDER = KEYS
CERT = {k.public_key.raw: make_node_certificate(k, f"validator-{i}") for i, k in enumerate(KEYS)}


def cert(key):
    return CERT[key.public_key.raw][0]


def key_pem(key):
    return CERT[key.public_key.raw][1]


def _builder(subject_key, name="forged"):
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(subject_key)
        .serial_number(7)
        .not_valid_before(datetime.datetime(2024, 1, 1))
        .not_valid_after(datetime.datetime(2124, 1, 1))
    )


def _ed(key):
    return ed25519.Ed25519PrivateKey.from_private_bytes(key.seed)


def exchange(server_ctx, client_ctx):
    """One TLS connection over loopback. Returns what each side saw: the other side's node
    key (``server``/``client``) or the error that side hit (``server_error``/``client_error``)."""
    seen = {}
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)

    def serve():
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                seen["server"] = peer_certificate_key(tls)
                tls.sendall(tls.recv(1))
        except (ssl.SSLError, OSError) as exc:
            seen["server_error"] = exc

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        raw = socket.create_connection(listener.getsockname(), timeout=5)
        with client_ctx.wrap_socket(raw) as tls:
            seen["client"] = peer_certificate_key(tls)
            tls.sendall(b"x")
            # TLS 1.3 reports a refused client certificate only on the first read.
            if tls.recv(1) != b"x":
                seen["client_error"] = ConnectionError("connection closed")
    except (ssl.SSLError, OSError) as exc:
        seen["client_error"] = exc
    finally:
        thread.join(5)
        listener.close()
    return seen


PINNED = [cert(A), cert(B)]


# ---------------------------------------------------------------- certificates


def test_node_certificate_carries_the_node_key_and_is_reproducible():
    cert_pem, pem = make_node_certificate(A, "validator-0")
    assert node_key_of_certificate(cert_pem) == A.public_key.raw
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    assert node_key_of_certificate(der) == A.public_key.raw
    assert make_node_certificate(A, "validator-0") == (cert_pem, pem)
    assert make_node_certificate(A, "another-name")[0] != cert_pem
    check_node_certificate(cert_pem, A.public_key.raw)
    parsed = x509.load_pem_x509_certificate(cert_pem)
    assert parsed.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert parsed.not_valid_after_utc.year == 9999


@pytest.mark.parametrize("name", ["", "x" * 65, "tab\there", 7])
def test_make_node_certificate_refuses_unusable_names(name):
    with pytest.raises(TlsError, match="printable characters"):
        make_node_certificate(A, name)


def test_check_node_certificate_refuses_a_certificate_listed_with_another_key():
    with pytest.raises(TlsError, match="belongs to node key"):
        check_node_certificate(cert(A), B.public_key.raw)


def test_check_node_certificate_refuses_a_certificate_not_signed_by_its_own_key():
    # The subject key is A's node key, but B's key made the signature.
    forged = _builder(_ed(A).public_key()).add_extension(
        x509.BasicConstraints(ca=False, path_length=None), critical=True
    ).sign(_ed(B), None)
    with pytest.raises(TlsError, match="self-signature does not verify"):
        check_node_certificate(forged.public_bytes(serialization.Encoding.PEM), A.public_key.raw)


def test_check_node_certificate_refuses_a_ca_certificate():
    ca = _builder(_ed(A).public_key()).add_extension(
        x509.BasicConstraints(ca=True, path_length=None), critical=True
    ).sign(_ed(A), None)
    with pytest.raises(TlsError, match="must not be a CA"):
        check_node_certificate(ca.public_bytes(serialization.Encoding.PEM), A.public_key.raw)


def test_node_key_of_certificate_refuses_keys_other_than_ed25519_and_non_certificates():
    ecdsa = ec.generate_private_key(ec.SECP256R1())
    other = _builder(ecdsa.public_key()).sign(ecdsa, hashes.SHA256())
    with pytest.raises(TlsError, match="Ed25519"):
        node_key_of_certificate(other.public_bytes(serialization.Encoding.DER))
    with pytest.raises(TlsError, match="not an X.509 certificate"):
        node_key_of_certificate(b"\x30\x03\x02\x01\x00")
    with pytest.raises(TlsError, match="PEM or DER bytes"):
        node_key_of_certificate("text")


def test_peer_tls_refuses_a_genesis_certificate_that_does_not_match_the_key():
    with pytest.raises(TlsError, match="belongs to node key"):
        PeerTls.for_validator(A, cert(B), {A.public_key.raw: cert(A)})
    with pytest.raises(TlsError, match="belongs to node key"):
        PeerTls.for_validator(A, cert(A), {B.public_key.raw: cert(A)})


def test_context_builders_refuse_a_key_that_does_not_match_the_certificate():
    with pytest.raises(TlsError, match="do not load or do not match"):
        server_context(cert(A), key_pem(B), PINNED)


# ---------------------------------------------------------------- handshakes


def test_mutual_tls_13_succeeds_between_pinned_validators_and_each_side_sees_the_others_node_key():
    seen = exchange(
        server_context(cert(A), key_pem(A), PINNED),
        client_context(cert(B), key_pem(B), PINNED),
    )
    assert seen == {"server": B.public_key.raw, "client": A.public_key.raw}


def test_server_refuses_a_client_whose_certificate_is_not_pinned():
    seen = exchange(
        server_context(cert(A), key_pem(A), PINNED),
        client_context(cert(OUTSIDER), key_pem(OUTSIDER), PINNED + [cert(OUTSIDER)]),
    )
    assert "certificate verify failed" in str(seen["server_error"])
    assert "server" not in seen and "client_error" in seen


def test_client_refuses_a_server_whose_certificate_is_not_pinned():
    seen = exchange(
        server_context(cert(OUTSIDER), key_pem(OUTSIDER), PINNED + [cert(OUTSIDER)]),
        client_context(cert(B), key_pem(B), PINNED),
    )
    assert isinstance(seen["client_error"], ssl.SSLCertVerificationError)
    assert "client" not in seen and "server" not in seen


def test_server_refuses_a_client_without_a_certificate():
    bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    bare.check_hostname = False
    bare.load_verify_locations(cadata=cert(A).decode())
    seen = exchange(server_context(cert(A), key_pem(A), PINNED), bare)
    assert "did not return a certificate" in str(seen["server_error"])
    assert "server" not in seen


def test_a_certificate_issued_by_a_pinned_validator_key_is_not_trusted():
    # Validator A's key signs a certificate for an outsider's key: pinning A trusts A
    # alone (its certificate is no CA), never what A's key vouches for.
    issuer = x509.load_pem_x509_certificate(cert(A)).subject
    issued = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "outsider")]))
        .issuer_name(issuer)
        .public_key(_ed(OUTSIDER).public_key())
        .serial_number(99)
        .not_valid_before(datetime.datetime(2024, 1, 1))
        .not_valid_after(datetime.datetime(2124, 1, 1))
        .sign(_ed(A), None)
    )
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.load_verify_locations(cadata=cert(A).decode())
    with tempfile.NamedTemporaryFile("wb", suffix=".pem") as f:
        f.write(issued.public_bytes(serialization.Encoding.PEM) + key_pem(OUTSIDER))
        f.flush()
        client.load_cert_chain(f.name)
    seen = exchange(server_context(cert(A), key_pem(A), PINNED), client)
    assert "certificate verify failed" in str(seen["server_error"])
    assert "server" not in seen


def test_shared_api_port_admits_clients_without_a_certificate_but_still_refuses_unpinned_ones():
    shared = server_context(cert(A), key_pem(A), PINNED, require_client_certificate=False)
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.check_hostname = False
    anonymous.load_verify_locations(cadata=cert(A).decode())
    assert exchange(shared, anonymous) == {"server": None, "client": A.public_key.raw}
    # ...and a pinned client is still recognised by its key.
    assert exchange(shared, client_context(cert(B), key_pem(B), PINNED))["server"] == B.public_key.raw
    seen = exchange(
        server_context(cert(A), key_pem(A), PINNED, require_client_certificate=False),
        client_context(cert(OUTSIDER), key_pem(OUTSIDER), PINNED),
    )
    assert "certificate verify failed" in str(seen["server_error"])


def test_api_server_context_serves_tls_12_clients_that_pin_the_node_certificate():
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    client.load_verify_locations(cadata=cert(A).decode())
    seen = exchange(api_server_context(cert(A), key_pem(A)), client)
    assert seen == {"server": None, "client": A.public_key.raw}


def test_peer_tls_trust_pins_a_validator_that_joins_at_runtime():
    a = PeerTls.for_validator(A, cert(A), {A.public_key.raw: cert(A), B.public_key.raw: cert(B)})
    joiner = PeerTls.for_validator(
        OUTSIDER, cert(OUTSIDER), {k.public_key.raw: cert(k) for k in KEYS}
    )
    assert "certificate verify failed" in str(exchange(a.server, joiner.client)["server_error"])
    a.trust({OUTSIDER.public_key.raw: cert(OUTSIDER)})
    assert exchange(a.server, joiner.client)["server"] == OUTSIDER.public_key.raw
    with pytest.raises(TlsError, match="belongs to node key"):
        a.trust({B.public_key.raw: cert(OUTSIDER)})


def test_peer_server_refuses_clients_below_tls_13():
    old = client_context(cert(B), key_pem(B), PINNED)
    old.minimum_version = ssl.TLSVersion.TLSv1_2
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    seen = exchange(server_context(cert(A), key_pem(A), PINNED), old)
    assert "UNSUPPORTED_PROTOCOL" in str(seen["server_error"]) and "server" not in seen
