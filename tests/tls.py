"""TLS certificates for local brokers, made with the ``openssl`` command line.

A test or a demo of TLS needs what an operator would mount from a Secret: a CA,
a server certificate it signed (valid for ``localhost`` and ``127.0.0.1``, so
hostname verification passes), a client certificate for mutual TLS, and, to
show that verification is on, a second CA that signed nothing the server
presents. Keys are P-256: quick to make, and every client and broker here
speaks it.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ttg.endpoint import TLS
from ttg.errors import UsageError

#: Certificates are for tests and demos: valid for a couple of days only.
DAYS = 2
_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
_LEAF = (
    "basicConstraints = CA:FALSE\n"
    "keyUsage = critical, digitalSignature, keyEncipherment\n"
    "subjectKeyIdentifier = hash\n"
    "authorityKeyIdentifier = keyid\n"
)


@dataclass(frozen=True)
class TLSMaterial:
    """Files of one set of test certificates (PEM), all in ``dir``."""

    dir: Path
    #: The CA that signed the server's and the client's certificates.
    ca_file: Path
    #: A CA that signed neither: a client trusting only it must refuse the server.
    other_ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @property
    def server(self) -> TLS:
        """What a broker is started with: its certificate and key, and the CA of its clients."""
        return TLS(str(self.ca_file), str(self.server_cert), str(self.server_key))

    @property
    def client(self) -> TLS:
        """What TTG is given: the CA that signed the server (no client certificate)."""
        return TLS(str(self.ca_file))

    @property
    def mutual(self) -> TLS:
        """The CA and a client certificate (mutual TLS)."""
        return TLS(str(self.ca_file), str(self.client_cert), str(self.client_key))


def _openssl(*args: str, cwd: Path) -> None:
    try:
        subprocess.run(
            ["openssl", *args], cwd=cwd, check=True, capture_output=True, text=True, timeout=60
        )
    except subprocess.CalledProcessError as e:
        raise UsageError(f"openssl {args[0]}: {e.stderr.strip()[-300:]}") from None


def _ca(directory: Path, name: str, cn: str) -> None:
    _openssl(
        "req", "-x509", *_KEY, "-keyout", f"{name}.key", "-out", f"{name}.crt",
        "-days", str(DAYS), "-subj", f"/CN={cn}",
        "-addext", "basicConstraints = critical, CA:TRUE",
        "-addext", "keyUsage = critical, keyCertSign, cRLSign",
        cwd=directory,
    )  # fmt: skip


def _leaf(directory: Path, name: str, cn: str, extensions: str) -> None:
    (directory / f"{name}.ext").write_text(_LEAF + extensions)
    _openssl(
        "req", *_KEY, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", f"{name}.crt", "-days", str(DAYS),
        "-extfile", f"{name}.ext",
        cwd=directory,
    )  # fmt: skip


def make_tls_material(directory: Path) -> TLSMaterial:
    """Make a CA, a server and a client certificate signed by it, and an unrelated CA.

    Raises:
        UsageError: ``openssl`` is missing or failed.
    """
    if not shutil.which("openssl"):
        raise UsageError("openssl not found on PATH (apt-get install openssl)")
    directory.mkdir(parents=True, exist_ok=True)
    _ca(directory, "ca", "ttg test CA")
    _ca(directory, "other-ca", "ttg unrelated CA")
    _leaf(
        directory,
        "server",
        "localhost",
        "extendedKeyUsage = serverAuth\nsubjectAltName = DNS:localhost, IP:127.0.0.1\n",
    )
    _leaf(directory, "client", "ttg-client", "extendedKeyUsage = clientAuth\n")
    return TLSMaterial(
        dir=directory,
        ca_file=directory / "ca.crt",
        other_ca_file=directory / "other-ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
    )
