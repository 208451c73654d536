"""TLS and SuperNode authentication material for a federation that leaves loopback.

A private CA signs one server certificate for the SuperLink (Fleet, Control and Runtime APIs
share it), whose SAN must name every address a client dials: the SuperNodes' Fleet address, the
operator's Control address, and 127.0.0.1, which the SuperLink's own SuperExec dials. Each
SuperNode gets an EC key pair in OpenSSH format (Flower 1.39 reads only that); the SuperLink
admits a node only once its public key is registered (``flwr supernode register``).

One folder per holder, so that each mounts only what is its own (:func:`layout`)::

    ca.crt, ca.key                 the operator's (ca.key is deleted where nothing else is signed)
    superlink/                     ca.crt, server.pem, server.key: the SuperLink's alone
    public/                        ca.crt, nodes/<name>.pub: for whoever registers or submits
    nodes/<name>/                  ca.crt, <name> (private key), <name>.pub: that SuperNode's alone
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# 127.0.0.1: the SuperLink's SuperExec dials the Runtime API there with the same certificate.
DEFAULT_SANS = ("127.0.0.1", "localhost")
VALID_DAYS = 365
KeyAndCert = tuple[ec.EllipticCurvePrivateKey, x509.Certificate]


@dataclass(frozen=True)
class ServerCerts:
    """The files a TLS SuperLink is started with; clients need only ``ca``."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def in_folder(cls, folder: Path) -> "ServerCerts":
        """The SuperLink's files in a certificates folder (its ``superlink/`` sub-folder)."""
        own = folder / SUPERLINK_DIR
        return cls(own / "ca.crt", own / "server.pem", own / "server.key")


SUPERLINK_DIR, PUBLIC_DIR, NODES_DIR = "superlink", "public", "nodes"


def node_dir(folder: Path, name: str) -> Path:
    """A SuperNode's own folder: ``ca.crt``, its private key ``<name>`` and ``<name>.pub``."""
    return folder / NODES_DIR / name


def node_private_key(folder: Path, name: str) -> Path:
    return node_dir(folder, name) / name


def public_key(folder: Path, name: str) -> Path:
    """A node's public key as the registering side sees it (``public/nodes/<name>.pub``)."""
    return folder / PUBLIC_DIR / NODES_DIR / f"{name}.pub"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(entries: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for entry in dict.fromkeys(entries):  # keep order, drop repeats
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(entry)))
        except ValueError:
            names.append(x509.DNSName(entry))
    return x509.SubjectAlternativeName(names)


def make_ca(common_name: str = "flbackdoor CA") -> KeyAndCert:
    key = ec.generate_private_key(ec.SECP384R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name)).issuer_name(_name(common_name))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA384())
    )
    return key, cert


def make_server_cert(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
                     sans: list[str]) -> KeyAndCert:
    """A SuperLink certificate valid for ``sans`` (IP addresses and host names) plus
    :data:`DEFAULT_SANS`."""
    entries = [*sans, *DEFAULT_SANS]
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(entries[0])).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_san(entries), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    return key, cert


def san_entries(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(v) for v in san.get_values_for_type(x509.IPAddress)] + \
        san.get_values_for_type(x509.DNSName)


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    # Private keys are created 0600 from the start, never readable by others for a moment.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.replace(path)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def write_server_certs(folder: Path, sans: list[str]) -> ServerCerts:
    """A fresh CA (``ca.crt``, ``ca.key`` in ``folder``; ``ca.crt`` also in ``public/``) and
    SuperLink certificate (``superlink/``: ``ca.crt``, ``server.pem``, ``server.key``)."""
    paths = ServerCerts.in_folder(folder)
    ca_key, ca_cert = make_ca()
    key, cert = make_server_cert(ca_key, ca_cert, sans)
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    _write(folder / "ca.key", _pem_key(ca_key), private=True)
    for ca in (folder / "ca.crt", folder / PUBLIC_DIR / "ca.crt", paths.ca):
        _write(ca, ca_pem)
    _write(paths.key, _pem_key(key), private=True)
    _write(paths.cert, cert.public_bytes(serialization.Encoding.PEM))
    return paths


def write_node_key(private_path: Path) -> Path:
    """An EC (P-384) key pair for SuperNode authentication: ``private_path`` (OpenSSH private
    key, 0600) and ``<private_path>.pub`` (what the SuperLink's operator registers)."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH)
    _write(private_path, private, private=True)
    public_path = private_path.with_name(private_path.name + ".pub")
    _write(public_path, public + b"\n")
    return public_path
