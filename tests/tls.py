"""Throwaway certificates for TLS tests, made with the openssl command line."""

from __future__ import annotations

import subprocess
from pathlib import Path


def make_certificates(folder: Path, *, server: str, subject_alt_name: str) -> Path:
    """Write ca.pem, `server`.pem/.key (with `subject_alt_name`) and client.pem/.key to `folder`."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
        "-out", "ca.pem", "-days", "1", "-subj", "/CN=ravi-test-ca",
    )  # fmt: skip
    (folder / "server.ext").write_text(f"subjectAltName={subject_alt_name}\n")
    for name in (server, "client"):
        openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", "-subj", f"/CN=ravi-test-{name}",
        )  # fmt: skip
        extra = ["-extfile", "server.ext"] if name == server else []
        openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "1", *extra,
        )  # fmt: skip
    return folder
