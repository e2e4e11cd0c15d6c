"""Certificates made with the `openssl` CLI, as an Issuer (cert-manager) or an operator would.

A test CA, server certificates for given DNS names and IP addresses, client
certificates; and the Secrets they go into, with the keys cert-manager writes
(``tls.crt``, ``tls.key``, ``ca.crt``).
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest


def openssl(*args: str, cwd: Path) -> None:
    if not shutil.which("openssl"):
        pytest.fail("the openssl CLI is missing (apt-get install openssl)")
    proc = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, f"openssl {' '.join(args)}: {proc.stderr}"


@dataclass(frozen=True)
class Pair:
    crt: Path
    key: Path


@dataclass(frozen=True)
class CA:
    """A certificate authority in ``dir``."""

    dir: Path
    crt: Path
    key: Path

    @classmethod
    def create(cls, dir: Path, name: str = "ttg-test-ca") -> CA:
        dir.mkdir(parents=True, exist_ok=True)
        openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-subj", f"/CN={name}", "-days", "2", "-keyout", "ca.key", "-out", "ca.crt",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            cwd=dir,
        )  # fmt: skip
        return cls(dir, dir / "ca.crt", dir / "ca.key")

    def issue(
        self,
        name: str,
        *,
        usages: Sequence[str],
        dns: Sequence[str] = (),
        ips: Sequence[str] = (),
    ) -> Pair:
        """A certificate and key signed by this CA; ``usages``: serverAuth, clientAuth."""
        sans = [f"DNS:{d}" for d in dns] + [f"IP:{i}" for i in ips]
        ext = [
            "basicConstraints=critical,CA:FALSE",
            "keyUsage=critical,digitalSignature",
            f"extendedKeyUsage={','.join(usages)}",
        ]
        if sans:
            ext.append(f"subjectAltName={','.join(sans)}")
        (self.dir / f"{name}.ext").write_text("\n".join(ext) + "\n")
        openssl(
            "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            cwd=self.dir,
        )  # fmt: skip
        openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-out", f"{name}.crt", "-extfile", f"{name}.ext",
            cwd=self.dir,
        )  # fmt: skip
        return Pair(self.dir / f"{name}.crt", self.dir / f"{name}.key")

    def secret(self, pair: Pair) -> dict[str, str]:
        """What cert-manager writes into a Certificate's Secret (and an existingSecret holds)."""
        return {
            "tls.crt": pair.crt.read_text(),
            "tls.key": pair.key.read_text(),
            "ca.crt": self.crt.read_text(),
        }


def handshake(port: int, server_hostname: str, ca: Path, client: Pair | None = None) -> str:
    """A TLS handshake with 127.0.0.1:``port``, verifying the certificate for ``server_hostname``.

    Returns the negotiated protocol version; raises ssl.SSLError (or OSError) when it fails.
    """
    context = ssl.create_default_context(cafile=str(ca))
    if client:
        context.load_cert_chain(str(client.crt), str(client.key))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        return str(tls.version())
