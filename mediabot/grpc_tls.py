"""Optional TLS and mutual TLS for the internal gRPC channels, from PEM files named in configuration.

Off unless configured: inside one pod network or compose project the channels are plaintext, as before.
With a service mesh (Istio, Linkerd) mTLS is the mesh's job and these stay off; without one, set them.
Server: a certificate and key; adding a client CA makes the server demand a client certificate signed by it.
Client: a CA to verify the server; a certificate and key as well for mTLS.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from mediabot.config import ConfigError, invalid


def _read(path: str, name: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise invalid(name, "a readable PEM file", path, f"cannot read it ({error.strerror})") from None
    if b"-----BEGIN" not in data:
        raise invalid(name, "a PEM file", path, "no -----BEGIN line in it")
    return data


def server_credentials(
    cert_file: str, key_file: str, client_ca_file: str, *, prefix: str
) -> grpc.ServerCredentials | None:
    """None when no certificate is configured (plaintext); credentials otherwise, mTLS with a client CA."""
    if not cert_file and not key_file:
        if client_ca_file:
            raise ConfigError(f"{prefix}_TLS_CLIENT_CA_FILE needs {prefix}_TLS_CERT_FILE and {prefix}_TLS_KEY_FILE")
        return None
    if not (cert_file and key_file):
        raise ConfigError(f"set both {prefix}_TLS_CERT_FILE and {prefix}_TLS_KEY_FILE, or neither")
    pair = (_read(key_file, f"{prefix}_TLS_KEY_FILE"), _read(cert_file, f"{prefix}_TLS_CERT_FILE"))
    if client_ca_file:
        return grpc.ssl_server_credentials(
            [pair], root_certificates=_read(client_ca_file, f"{prefix}_TLS_CLIENT_CA_FILE"),
            require_client_auth=True,
        )
    return grpc.ssl_server_credentials([pair])


def channel_credentials(ca_file: str, cert_file: str, key_file: str, *, prefix: str) -> grpc.ChannelCredentials | None:
    """None when no CA is configured (plaintext); TLS verifying the server otherwise, mTLS with a client pair."""
    if not ca_file:
        if cert_file or key_file:
            raise ConfigError(f"{prefix}_TLS_CERT_FILE/KEY_FILE need {prefix}_TLS_CA_FILE")
        return None
    if bool(cert_file) != bool(key_file):
        raise ConfigError(f"set both {prefix}_TLS_CERT_FILE and {prefix}_TLS_KEY_FILE, or neither")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca_file, f"{prefix}_TLS_CA_FILE"),
        private_key=_read(key_file, f"{prefix}_TLS_KEY_FILE") if key_file else None,
        certificate_chain=_read(cert_file, f"{prefix}_TLS_CERT_FILE") if cert_file else None,
    )


def add_port(server: grpc.Server, listen: str, credentials: grpc.ServerCredentials | None) -> int:
    """Bind ``listen`` with TLS when credentials are given; returns the port (0 when binding failed)."""
    if credentials is None:
        return server.add_insecure_port(listen)
    return server.add_secure_port(listen, credentials)
