"""Certificates anyone can verify: strict JSON, signed over RFC 8785, checked without unbake.

The verifier is the script of ``docs/certificates.md``, run as it is printed there: it
imports only ``json``, ``hashlib``, ``decimal`` and ``cryptography``.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from typer.testing import CliRunner

from tests.waiting import HUNG_AFTER
from unbake._jcs import canonicalize
from unbake.cli import app
from unbake.exceptions import CertificateError
from unbake.service import DeletionService
from unbake.service.deletion import drain
from unbake.workspace.certificates import (
    LEGACY_FORMAT,
    fingerprint,
    load_or_create_signing_key,
    public_key_pem,
    verify_certificate,
)
from unbake.workspace.ledger import canonical_json

DOC = Path(__file__).resolve().parents[1] / "docs" / "certificates.md"


def _doc_script() -> str:
    (script,) = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    return script


def _doc_verifier() -> dict:
    """The namespace of the Python script in docs/certificates.md (not run as __main__)."""
    script = _doc_script()
    imports = re.findall(r"^(?:from|import) (\S+)", script, flags=re.M)
    assert not [
        m
        for m in imports
        if m.split(".")[0] not in ("hashlib", "json", "sys", "decimal", "cryptography")
    ]
    namespace = {"__name__": "verifier"}
    exec(compile(script, str(DOC), "exec"), namespace)
    return namespace


@pytest.fixture(scope="module")
def certified(service_template, tmp_path_factory):
    """A real service run on digits: requests of 2, 3 and 40 samples and a whole class,
    each applied and certified by the worker loop; (workspace root, public key PEM)."""
    root = tmp_path_factory.mktemp("certs") / "ws"
    shutil.copytree(service_template[0], root)
    train = service_template[1]
    with DeletionService(root) as svc:
        for ids in (train[:2], train[2:5], train[5:45]):
            svc.submit(sample_ids=ids, submitted_by="alice")
        svc.submit(class_label=7, submitted_by="operator")
        drain(svc, once=True, certify=True, batch=1)  # one request a batch: its own metrics
        assert svc.state_counts() == {"certified": 4}
    return root, public_key_pem(load_or_create_signing_key(root))


def _files(root: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted((root / "certificates").glob("*.json"))]


def test_every_certificate_is_strict_json_and_verifies_without_unbake(certified):
    root, key = certified
    verifier = _doc_verifier()
    files = _files(root)
    assert len(files) == 4
    undefined = 0
    for data in files:
        body = verifier["verify"](data, key)  # raises on any failure
        assert body == verify_certificate(data, key)
        assert body["format"] == "unbake-certificate/2"
        assert verifier["jcs"](body).encode() == canonicalize(body)  # two JCS agree
        metrics = body["verification"]["metrics"]
        undefined += sum(v is None for v in metrics.values())
        assert b"NaN" not in data and b"Infinity" not in data
    # A request of fewer than 5 samples has no MIA-LR score: null, where it was a bare NaN.
    assert undefined >= 2


def test_the_documented_script_runs_as_printed(certified, tmp_path):
    root, key = certified
    (tmp_path / "verify_certificate.py").write_text(_doc_script())
    (tmp_path / "public-key.pem").write_bytes(key)
    cert = sorted((root / "certificates").glob("*.json"))[0]
    run = subprocess.run(
        [sys.executable, "-I", "verify_certificate.py", str(cert), "public-key.pem"],
        cwd=tmp_path,
        env={"PATH": os.environ.get("PATH", "")},
        capture_output=True,
        text=True,
        timeout=HUNG_AFTER,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == f"valid: request {cert.stem}, key {fingerprint(key)}\n"


def test_the_independent_verifier_refuses_tampering(certified):
    root, key = certified
    verifier = _doc_verifier()
    data = _files(root)[0]
    document = json.loads(data)
    document["certificate"]["method"] = "something-else"
    with pytest.raises(InvalidSignature):
        verifier["verify"](json.dumps(document).encode(), key)
    with pytest.raises(CertificateError):
        verify_certificate(json.dumps(document).encode(), key)
    document = json.loads(data)
    metric = next(iter(document["certificate"]["verification"]["metrics"]))
    document["certificate"]["verification"]["metrics"][metric] = float("nan")
    with pytest.raises(ValueError, match="NaN is not JSON"):
        verifier["verify"](json.dumps(document).encode(), key)
    with pytest.raises(CertificateError, match="NaN"):
        verify_certificate(json.dumps(document, sort_keys=True, indent=2).encode() + b"\n", key)
    other = load_or_create_signing_key(root.parent / "other")  # another workspace's key
    with pytest.raises(ValueError, match="another key"):
        verifier["verify"](data, public_key_pem(other))


def test_cli_verify_prints_the_key_fingerprint(certified, tmp_path):
    root, key = certified
    (tmp_path / "key.pem").write_bytes(key)
    cert = sorted((root / "certificates").glob("*.json"))[0]
    r = CliRunner().invoke(
        app, ["certificate", "verify", str(cert), "--public-key", str(tmp_path / "key.pem")]
    )
    assert r.exit_code == 0, r.output
    assert f"fingerprint {fingerprint(key)}" in r.output
    r = CliRunner().invoke(
        app,
        ["certificate", "verify", str(cert), "--public-key", str(tmp_path / "key.pem"), "--json"],
    )
    assert json.loads(r.output)["key_fingerprint"] == fingerprint(key)


def _legacy_certificate(root: Path) -> bytes:
    """A real certificate rewritten as unbake wrote format 1 before RFC 8785 (a bare NaN,
    signed over Python's sorted-key JSON) with the same workspace key."""
    body = json.loads(_files(root)[0])["certificate"]
    body["format"] = LEGACY_FORMAT
    body["verification"]["metrics"]["mia_lr"] = float("nan")
    signature = load_or_create_signing_key(root).sign(canonical_json(body).encode()).hex()
    document = {"certificate": body, "signature": {"algorithm": "Ed25519", "value": signature}}
    return (json.dumps(document, sort_keys=True, indent=2) + "\n").encode()


def test_an_old_format_certificate_still_verifies_and_says_so(certified, tmp_path):
    root, key = certified
    data = _legacy_certificate(root)
    assert b"NaN" in data
    assert verify_certificate(data, key)["format"] == LEGACY_FORMAT
    (tmp_path / "cert.json").write_bytes(data)
    (tmp_path / "key.pem").write_bytes(key)
    args = ["certificate", "verify", str(tmp_path / "cert.json")]
    r = CliRunner().invoke(app, [*args, "--public-key", str(tmp_path / "key.pem")])
    assert r.exit_code == 0, r.output
    assert "Format unbake-certificate/1 (before RFC 8785" in " ".join(r.output.split())
    newer = data.replace(b"unbake-certificate/1", b"unbake-certificate/9")
    with pytest.raises(CertificateError, match="which this unbake does not read"):
        verify_certificate(newer, key)
    with pytest.raises(ValueError, match="NaN is not JSON"):  # the strict verifier refuses it
        _doc_verifier()["verify"](data, key)
