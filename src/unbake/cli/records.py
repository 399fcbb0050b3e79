"""Tokens, the ledger and certificates: ``token …``, ``ledger …``, ``certificate …``."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Annotated

import typer

from unbake.cli._common import (
    DEFAULT_WS,
    JsonOpt,
    WorkspaceOpt,
    _emit_json,
    _handle_errors,
    _table,
    console,
    err_console,
)
from unbake.exceptions import InvalidParameterError

# --- tokens and the REST service ----------------------------------------------------

token_app = typer.Typer(
    help="Bearer tokens of the REST API (`unbake serve`).", no_args_is_help=True
)


@token_app.command("create")
@_handle_errors
def token_create(
    role: Annotated[str, typer.Option(help="submitter, operator or auditor.")],
    name: Annotated[str | None, typer.Option(help="A label to recognise the token by.")] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Write the token to this file, mode 0600 (default: print it)."),
    ] = None,
    workspace: WorkspaceOpt = DEFAULT_WS,
    as_json: JsonOpt = False,
) -> None:
    """Make a bearer token and print it once (only its keyed hash is stored)."""
    from unbake.workspace import Workspace
    from unbake.workspace.atomic import PRIVATE, atomic_write_bytes
    from unbake.workspace.tokens import create_token

    with Workspace.open(workspace) as ws:
        token, token_id = create_token(ws, role, name=name)
    if out is not None:
        atomic_write_bytes(out, (token + "\n").encode("ascii"), mode=PRIVATE)
        err_console.print(f"Token {token_id} ({role}) written to {out} (mode 0600).")
        return
    _keep_stdout_private()
    if as_json:
        _emit_json({"token": token, "token_id": token_id, "role": role})
    else:
        sys.stdout.write(token + "\n")


def _keep_stdout_private() -> None:
    """A secret printed into a file of ours (``> operator.token``) that others could read:
    make the file 0600 before a byte of the secret is in it, and say so."""
    try:
        fd = sys.stdout.fileno()
        st = os.fstat(fd)
    except (AttributeError, OSError, ValueError):  # not a real file (a pipe, a test)
        return
    if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077 and st.st_uid == os.getuid():
        os.fchmod(fd, stat.S_IMODE(st.st_mode) & 0o700)
        err_console.print("note: the file the token goes to was readable by others; now 0600.")


@token_app.command("list")
@_handle_errors
def token_list(workspace: WorkspaceOpt = DEFAULT_WS, as_json: JsonOpt = False) -> None:
    """List the tokens: ID, role, name, when made and when revoked (never the token)."""
    from unbake.workspace import Workspace
    from unbake.workspace.tokens import list_tokens

    with Workspace.open(workspace, read_only=True) as ws:
        rows = list_tokens(ws)
    if as_json:
        _emit_json(rows)
        return
    columns = ["token_id", "role", "name", "created_at", "revoked_at"]
    cells = [[r[c] if r[c] is not None else "" for c in columns] for r in rows]
    console.print(_table(f"Tokens ({len(rows)})", columns, cells))


@token_app.command("revoke")
@_handle_errors
def token_revoke(
    token_id: Annotated[str, typer.Argument(help="The token's ID, as `unbake token list` shows.")],
    workspace: WorkspaceOpt = DEFAULT_WS,
    as_json: JsonOpt = False,
) -> None:
    """Revoke a token: a running `unbake serve` refuses it (401) from its next request."""
    from unbake.workspace import Workspace
    from unbake.workspace.tokens import revoke_token

    with Workspace.open(workspace) as ws:
        row = revoke_token(ws, token_id)
    if as_json:
        _emit_json(row)
    elif row["revoked"]:
        console.print(f"Revoked token {token_id} ({row['role']}).")
    else:
        console.print(f"Token {token_id} was already revoked at {row['revoked_at']}.")


# --- ledger and certificates ---------------------------------------------------------

ledger_app = typer.Typer(help="The hash-chained ledger of deletion requests.", no_args_is_help=True)
certificate_app = typer.Typer(help="Signed deletion certificates.", no_args_is_help=True)


CertificateArg = Annotated[Path, typer.Argument(help="The certificate (JSON).")]


def _read_input(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidParameterError(
            f"Cannot read the {what} {path} ({exc.strerror}); check the path."
        ) from None


@ledger_app.command("verify")
@_handle_errors
def ledger_verify(workspace: WorkspaceOpt = DEFAULT_WS, as_json: JsonOpt = False) -> None:
    """Recompute the hash chain; name the first entry edited, deleted or reordered."""
    from unbake.workspace import Workspace

    with Workspace.open(workspace) as ws:
        entries, head = ws.catalog.verify_ledger()
    if as_json:
        _emit_json({"valid": True, "entries": entries, "head": head})
        return
    console.print(f"Ledger intact: {entries} entries, head {head}.")


@ledger_app.command("show")
@_handle_errors
def ledger_show(
    request: Annotated[str | None, typer.Option(help="Only this request's entries.")] = None,
    workspace: WorkspaceOpt = DEFAULT_WS,
    as_json: JsonOpt = False,
) -> None:
    """The ledger's entries (state transitions), oldest first."""
    from unbake.workspace import Workspace

    with Workspace.open(workspace) as ws:
        entries = ws.ledger(request_id=request)
    if as_json:
        _emit_json({"entries": entries})
        return
    console.print(
        _table(
            "ledger",
            ["seq", "request", "state", "time", "details", "hash"],
            [
                [
                    e["seq"],
                    e["request_id"],
                    e["state"],
                    e["timestamp"][:19],
                    json.dumps(e["payload"], sort_keys=True)[:80],
                    e["hash"][:12],
                ]
                for e in entries
            ],
        )
    )


@ledger_app.command("retention")
@_handle_errors
def ledger_retention(
    reason_days: Annotated[
        int | None,
        typer.Option(help="Days a done request keeps its reason before it is erased (default 0)."),
    ] = None,
    id_days: Annotated[
        int | None,
        typer.Option(
            help="Days a done request keeps its sample IDs (the proof window; default 30)."
        ),
    ] = None,
    workspace: WorkspaceOpt = DEFAULT_WS,
    as_json: JsonOpt = False,
) -> None:
    """Show, or set, how long a done request keeps its personal data (see docs/personal-data.md)."""
    from unbake.workspace import Workspace

    with Workspace.open(workspace) as ws:
        if reason_days is not None or id_days is not None:
            ws.set_retention(reason_days=reason_days, id_days=id_days)
        days = ws.retention()
    if as_json:
        _emit_json({"retention_days": days})
        return
    console.print(
        f"A done request keeps its reason {days['reason']} days and its sample IDs "
        f"{days['sample_ids']} days, then `unbake ledger shred` (or the worker) erases them."
    )


@ledger_app.command("shred")
@_handle_errors
def ledger_shred(workspace: WorkspaceOpt = DEFAULT_WS, as_json: JsonOpt = False) -> None:
    """Erase the reasons and sample IDs of done requests whose retention has ended
    (their keys are destroyed; the ledger still verifies). The worker runs it too."""
    from unbake.workspace import Workspace

    with Workspace.open(workspace) as ws:
        done = ws.shred_due()
    if as_json:
        _emit_json(done)
        return
    console.print(
        f"Erased {len(done['shredded'])} personal fields of done requests"
        + ("." if done["wal_truncated"] else "; a reader kept the WAL: run it again.")
    )


@certificate_app.command("issue")
@_handle_errors
def certificate_issue(
    request: Annotated[str, typer.Option(help="ID of an applied request.")],
    out: Annotated[Path | None, typer.Option(help="Write it here (default: stdout).")] = None,
    workspace: WorkspaceOpt = DEFAULT_WS,
) -> None:
    """Sign a certificate for an applied request (the ledger records it as certified)."""
    from unbake.workspace import Workspace
    from unbake.workspace.atomic import atomic_write_bytes
    from unbake.workspace.certificates import issue_certificate

    with Workspace.open(workspace) as ws:
        data, _ = issue_certificate(ws, request)
    if out is None:
        sys.stdout.write(data.decode("ascii"))
        return
    atomic_write_bytes(out, data)
    console.print(f"Certificate of request {request} written to {out}.")


@certificate_app.command("public-key")
@_handle_errors
def certificate_public_key(
    out: Annotated[Path | None, typer.Option(help="Write it here (default: stdout).")] = None,
    workspace: WorkspaceOpt = DEFAULT_WS,
) -> None:
    """The workspace's Ed25519 public key (PEM), for verifying its certificates offline."""
    from unbake.workspace import Workspace
    from unbake.workspace.atomic import atomic_write_bytes
    from unbake.workspace.certificates import workspace_public_key

    with Workspace.open(workspace) as ws:
        pem = workspace_public_key(ws)
    if out is None:
        sys.stdout.write(pem.decode("ascii"))
    else:
        atomic_write_bytes(out, pem)


@certificate_app.command("verify")
@_handle_errors
def certificate_verify(
    file: CertificateArg,
    public_key: Annotated[Path, typer.Option(help="The workspace's public key (PEM).")],
    as_json: JsonOpt = False,
) -> None:
    """Check a certificate's signature offline (no workspace needed); exit 2 if it fails."""
    from unbake.workspace.certificates import LEGACY_FORMAT, fingerprint, verify_certificate

    key = _read_input(public_key, "public key")
    body = verify_certificate(_read_input(file, "certificate"), key)
    if as_json:
        _emit_json({"valid": True, "key_fingerprint": fingerprint(key), "certificate": body})
        return
    console.print(
        f"Valid: request {body['request_id']}, {len(body['sample_hmacs'])} samples, "
        f"{body['method']} ({body['guarantee']}), model {body['model_before']['id']} → "
        f"{body['model_after']['id']}, issued {body['issued_at'][:19]}."
    )
    console.print(f"Signed by the key with SHA-256 fingerprint {fingerprint(key)}.", soft_wrap=True)
    if body["format"] == LEGACY_FORMAT:
        console.print(
            f"Format {LEGACY_FORMAT} (before RFC 8785: signed over Python's sorted-key JSON); "
            "certificates issued now are signed over RFC 8785 canonical JSON."
        )


@certificate_app.command("check-subject")
@_handle_errors
def certificate_check_subject(
    file: CertificateArg,
    subject: Annotated[str, typer.Option(help="The subject ID to look for.")],
    workspace: WorkspaceOpt = DEFAULT_WS,
    as_json: JsonOpt = False,
) -> None:
    """Whether the certificate names SUBJECT (by its keyed hash, with the workspace secret)."""
    from unbake.workspace import Workspace
    from unbake.workspace.certificates import read_certificate, subject_matches

    body = read_certificate(_read_input(file, "certificate"))
    with Workspace.open(workspace) as ws:
        found = subject_matches(ws, body, subject)
    if as_json:
        _emit_json({"request_id": body["request_id"], "names_subject": found})
    else:
        verb = "names" if found else "does not name"
        console.print(f"Certificate of request {body['request_id']} {verb} this subject.")
    if not found:
        raise typer.Exit(1)
