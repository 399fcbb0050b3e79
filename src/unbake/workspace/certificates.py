"""Signed deletion certificates: what a request forgot, how, how well, and where in the ledger.

A certificate file is the strict JSON object ``{"certificate": BODY, "signature":
{"algorithm": "Ed25519", "value": HEX}}`` (BODY names the signing key by its
fingerprint, the SHA-256 of its PEM, in ``public_key_sha256``), written in one layout
(sorted keys, two-space indent, ASCII, a final newline). A metric that is undefined is
``null``: the file never holds ``NaN`` or ``Infinity``. The signature covers the RFC 8785
(JCS) canonical bytes of BODY (:func:`unbake._jcs.canonicalize`), so anyone can check it
with a JSON parser, a JCS encoder and Ed25519 (``docs/certificates.md`` shows how).
:func:`verify_certificate` also refuses a file that is not byte-for-byte in that layout,
so any changed byte is refused, even one that would parse to the same values. Public
keys travel as PEM (SubjectPublicKeyInfo), also checked to be in canonical form.

Format ``unbake-certificate/2`` is the one issued. Format 1 (before RFC 8785: signed over
Python's sorted-key compact JSON, which could hold a bare ``NaN``) still verifies, and
:func:`verify_certificate` says which format it met (``body["format"]``).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from unbake import _json as strict_json
from unbake._jcs import canonicalize
from unbake.exceptions import CertificateError, IntegrityError, WorkspaceError
from unbake.workspace import ledger
from unbake.workspace.atomic import PRIVATE, atomic_write_bytes, sha256_bytes
from unbake.workspace.catalog import utcnow
from unbake.workspace.keys import SIGNING_KEY
from unbake.workspace.ledger import canonical_json

if TYPE_CHECKING:
    from unbake.workspace.workspace import Workspace

__all__ = [
    "FORMAT",
    "LEGACY_FORMAT",
    "fingerprint",
    "issue_certificate",
    "load_or_create_signing_key",
    "public_key_pem",
    "read_certificate",
    "sign_certificate",
    "stored_certificate",
    "subject_matches",
    "verify_certificate",
    "workspace_public_key",
]

FORMAT = "unbake-certificate/2"
#: Format 1: signed over :func:`unbake.workspace.ledger.canonical_json` (not RFC 8785).
LEGACY_FORMAT = "unbake-certificate/1"
_READ = (FORMAT, LEGACY_FORMAT)
#: The workspace folder that keeps each issued certificate, as ``REQUEST_ID.json``.
CERTIFICATES = "certificates"
_HEX_SIGNATURE = re.compile(r"[0-9a-f]{128}")


def load_or_create_signing_key(root: Path) -> Ed25519PrivateKey:
    """The workspace's Ed25519 key (file mode 0600), made on first use."""
    path = root / SIGNING_KEY
    if not path.exists():
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        atomic_write_bytes(path, pem, mode=0o600)
        return key
    try:
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except ValueError as exc:
        raise IntegrityError(
            f"The signing key {path} is damaged ({exc}); restore it from a backup."
        ) from None
    if not isinstance(loaded, Ed25519PrivateKey):
        raise IntegrityError(f"The signing key {path} is not an Ed25519 key; restore it.")
    return loaded


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def fingerprint(public_key: bytes) -> str:
    """The key's fingerprint: the SHA-256 (hex) of its PEM, what ``sha256sum KEY.pem``
    prints and what a certificate's ``public_key_sha256`` holds."""
    return hashlib.sha256(public_key).hexdigest()


def _layout(document: dict[str, Any], *, strict: bool = True) -> bytes:
    text = json.dumps(document, sort_keys=True, indent=2, ensure_ascii=True, allow_nan=not strict)
    return (text + "\n").encode()


def _signed_bytes(body: dict[str, Any]) -> bytes:
    """What the signature of ``body`` covers, by its format."""
    if body.get("format") == LEGACY_FORMAT:
        return canonical_json(body).encode("ascii")
    return canonicalize(body)


def _exact_numbers(value: Any) -> Any:
    """``value`` with each integer that no double holds exactly (which RFC 8785 cannot
    encode, such as a 64-bit seed) written as its decimal string."""
    if isinstance(value, dict):
        return {k: _exact_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_exact_numbers(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and float(value) != value:
        return str(value)
    return value


def sign_certificate(body: dict[str, Any], key: Ed25519PrivateKey) -> bytes:
    """The certificate file's bytes: ``body`` (made strict JSON: non-finite numbers become
    ``null``) and its Ed25519 signature over the body's RFC 8785 bytes."""
    body = _exact_numbers(json.loads(strict_json.dumps({**body, "format": FORMAT})))
    body["public_key_sha256"] = fingerprint(public_key_pem(key))
    signature = {"algorithm": "Ed25519", "value": key.sign(_signed_bytes(body)).hex()}
    return _layout({"certificate": body, "signature": signature})


def _load_public_key(data: bytes) -> Ed25519PublicKey:
    refuse = CertificateError(
        "The public key is not a valid Ed25519 PEM public key (or was altered); export it "
        "again with `unbake certificate public-key`."
    )
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise refuse from None
    if not isinstance(key, Ed25519PublicKey) or public_key_pem(key) != data:
        raise refuse
    return key


def _parse(data: bytes) -> tuple[dict[str, Any], str]:
    """(body, signature hex) of an intact certificate file (not yet checked)."""
    constants: list[str] = []  # NaN, Infinity: not JSON, but format 1 could hold them

    def constant(name: str) -> float:
        constants.append(name)
        return float(name)

    try:
        document = json.loads(data.decode("ascii"), parse_constant=constant)
    except (UnicodeDecodeError, ValueError):
        raise CertificateError(
            "The certificate is not valid JSON (it was altered or truncated); ask the "
            "operator for the original file."
        ) from None
    body = document.get("certificate") if isinstance(document, dict) else None
    found = body.get("format") if isinstance(body, dict) else None
    if isinstance(found, str) and found.startswith("unbake-certificate/") and found not in _READ:
        raise CertificateError(
            f"The certificate has format {found!r}, which this unbake does not read (it "
            f"reads {FORMAT} and {LEGACY_FORMAT}); verify it with a newer unbake."
        )
    if found == FORMAT and constants:
        raise CertificateError(
            f"The certificate holds {constants[0]}, which is not JSON and which no {FORMAT} "
            "certificate holds: it was altered; ask the operator for the original file."
        )
    signature = document.get("signature") if isinstance(document, dict) else None
    value = signature.get("value") if isinstance(signature, dict) else None
    if (
        not isinstance(document, dict)
        or set(document) != {"certificate", "signature"}
        or not isinstance(body, dict)
        or found not in _READ
        or not isinstance(signature, dict)
        or set(signature) != {"algorithm", "value"}
        or signature["algorithm"] != "Ed25519"
        or not isinstance(value, str)
        or not _HEX_SIGNATURE.fullmatch(value)
        or _layout(document, strict=False) != data
    ):
        raise CertificateError(
            f"The file is not an intact {FORMAT} certificate (fields missing or altered); ask "
            "the operator for the original file."
        )
    return body, value


def read_certificate(data: bytes) -> dict[str, Any]:
    """The body of a well-formed certificate file, its signature not checked."""
    return _parse(data)[0]


def verify_certificate(data: bytes, public_key: bytes) -> dict[str, Any]:
    """The certificate's body if ``data`` is a certificate signed by ``public_key``.

    Raises :class:`CertificateError` (one line: what failed) otherwise.
    """
    key = _load_public_key(public_key)
    body, value = _parse(data)
    if body.get("public_key_sha256") != fingerprint(public_key):
        raise CertificateError(
            f"Certificate {body.get('request_id')!r} was signed with another key than this "
            "public key; get the public key of the workspace that issued it."
        )
    try:
        key.verify(bytes.fromhex(value), _signed_bytes(body))
    except InvalidSignature:
        raise CertificateError(
            f"The signature of certificate {body.get('request_id')!r} does not verify with this "
            "public key: the certificate was altered or signed by another workspace."
        ) from None
    return body


def _guarantee(method: str) -> str:
    """``exact``, ``certified`` or ``none``, from the method's tags (``none`` forgets only
    held-out rows that no model saw, which is exact)."""
    from unbake.methods import METHODS

    if method == "none":
        return "exact"
    kind = METHODS.create(method).tags.kind
    return kind if kind in ("exact", "certified") else "none"


def issue_certificate(ws: Workspace, request_id: str) -> tuple[bytes, dict[str, Any]]:
    """Sign a certificate for an applied request and append ``certified`` to the ledger.

    Returns the file's bytes and the body. The ledger head in the certificate is the
    one just before its own ``certified`` entry, whose payload holds the certificate's
    SHA-256. Subject and sample IDs appear only as keyed hashes.
    """
    with ws.lock():
        req = ws.request_store.record(request_id)  # an unknown or unapplied request: refused
        row = next(r for r in ws.request_store.applied() if r["request_id"] == request_id)
        state = ws.request_store.state(request_id)
        if state not in ledger.DONE:
            raise WorkspaceError(
                f"Request {request_id} is {state or 'not in the ledger'}, not applied; only an "
                "applied request gets a certificate (see `unbake log`)."
            )
        key = load_or_create_signing_key(ws.root)
        seq, head_hash = ws.catalog.ledger_head()
        subject = row["selector"].get("subject_hmac")
        sample_hmacs, held_hmacs = ws.sample_store.forgotten_hmacs(request_id)
        body = {
            "format": FORMAT,
            "request_id": request_id,
            "dataset": ws.dataset_spec.get("name"),
            "received_at": ws.request_store.entries(request_id)[0]["timestamp"],
            "applied_at": row["created_at"],
            "subject_hmac": subject,
            "class": row["selector"].get("class"),
            "sample_hmacs": sample_hmacs,
            "held_out_hmacs": held_hmacs,
            "hash_scheme": "HMAC-SHA256(workspace secret, 'subject:' + ID or 'sample:' + ID)",
            "model_before": {"id": req.model_before, "sha256": row["hash_before"]},
            "model_after": {"id": req.model_after, "sha256": row["hash_after"]},
            "method": row["method"],
            "params": row["params"],
            "guarantee": _guarantee(row["method"]),
            "verification": {"metrics": row["metrics"], "audit": row["audit"]},
            "ledger_head": {"seq": seq, "hash": head_hash},
            "issued_at": utcnow(),
        }
        data = sign_certificate(body, key)
        atomic_write_bytes(ws.root / CERTIFICATES / f"{request_id}.json", data, mode=PRIVATE)
        with ws.catalog.transaction() as cur:
            payload = {"certificate_sha256": sha256_bytes(data), "ledger_head": seq}
            ws.request_store.append(cur, request_id, "certified", payload, body["issued_at"])
    return data, read_certificate(data)


def stored_certificate(root: Path, request_id: str) -> bytes | None:
    """The certificate file last issued for ``request_id`` (``None``: none kept)."""
    path = Path(root) / CERTIFICATES / f"{request_id}.json"
    if "/" in request_id or request_id.startswith(".") or not path.is_file():
        return None
    return path.read_bytes()


def subject_matches(ws: Workspace, body: dict[str, Any], subject: str) -> bool:
    """Whether the certificate ``body`` names ``subject`` (by its keyed hash)."""
    return body.get("subject_hmac") == ws.subject_hmac(subject)


def workspace_public_key(ws: Workspace) -> bytes:
    """The workspace's public key (PEM); the key pair is made on first use."""
    if (ws.root / SIGNING_KEY).exists():
        return public_key_pem(load_or_create_signing_key(ws.root))
    with ws.lock():
        return public_key_pem(load_or_create_signing_key(ws.root))
