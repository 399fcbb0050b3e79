"""A workspace's own tuned defaults: the table ``unbake tune --workspace`` writes.

The table has the format of the packaged one (:mod:`unbake.methods.tuned`), and each
entry cites its study, which is stored beside it. Both files are named by their content
(``tuning/defaults-<sha256>.json``, ``tuning/<method>-<scenario>-<sha256>.json``) and
written atomically before the catalog's ``tuned_defaults`` record points at the table
(its sha256 and a keyed digest under the workspace secret) in one transaction, so a
crash leaves the old table in force and at worst an unreferenced file. A table whose
bytes, or a study whose bytes, do not match what was recorded is refused in one line
(:class:`~unbake.exceptions.IntegrityError`), and nothing runs.

:func:`request_context` is what ``unbake forget`` and the worker match tuned defaults
against: the workspace's dataset, the model's architecture, the request's scenario and
this table.
"""

from __future__ import annotations

import hmac
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unbake.exceptions import IntegrityError, UnbakeError
from unbake.methods.tuned import FORMAT, RequestContext, TunedDefaults, check_table, scenario_of
from unbake.workspace.atomic import PRIVATE, atomic_write_bytes, sha256_bytes

if TYPE_CHECKING:
    from unbake.workspace.workspace import Workspace

__all__ = ["FOLDER", "read_table", "request_context", "write_entry"]

#: The folder of a workspace that holds its tuned-defaults table and the studies it cites.
FOLDER = "tuning"
_META = "tuned_defaults"
_FIX = (
    "rerun `unbake tune --workspace {root} --method M --scenario S` to write it again "
    "(`unbake forget --no-tuned` runs without it meanwhile)"
)


def _record(ws: Workspace) -> dict[str, Any] | None:
    text = ws.catalog.meta(_META)
    if text is None:
        return None
    record = ws.catalog.parse_json(text, "the tuned-defaults record")
    if not isinstance(record, dict) or not {"file", "sha256", "mac"} <= set(record):
        raise ws.catalog.damaged(f"the tuned-defaults record {record!r:.60} is malformed")
    return record


def _checked_bytes(ws: Workspace, rel: str, sha256: str, what: str) -> bytes:
    """The bytes of ``rel`` once they match ``sha256``; else one line with the fix."""
    path = ws.root / rel
    try:
        data = path.read_bytes()
    except OSError:
        raise IntegrityError(
            f"The workspace's {what} {path} is missing; restore it, or {_FIX.format(root=ws.root)}."
        ) from None
    if sha256_bytes(data) != sha256:
        raise IntegrityError(
            f"The workspace's {what} {path} does not match the sha256 recorded for it "
            f"(edited or corrupt); restore it, or {_FIX.format(root=ws.root)}."
        )
    return data


def read_table(ws: Workspace) -> dict[str, dict[str, dict[str, Any]]] | None:
    """The workspace's own table ``{method: {scenario: entry}}``, hash-checked with the
    studies it cites; ``None`` when ``unbake tune --workspace`` never wrote one."""
    record = _record(ws)
    if record is None:
        return None
    data = _checked_bytes(ws, record["file"], record["sha256"], "tuned-defaults table")
    if not hmac.compare_digest(ws.keyed_hash(_META, record["sha256"]), record["mac"]):
        raise IntegrityError(
            f"The workspace's tuned-defaults record does not carry the workspace's keyed "
            f"digest (the catalog was edited); {_FIX.format(root=ws.root)}."
        )
    where = str(ws.root / record["file"])
    table = check_table(json.loads(data), where, _FIX.format(root=ws.root))
    for scenarios in table.values():
        for entry in scenarios.values():
            if isinstance(entry, dict) and isinstance(entry.get("study"), str):
                _checked_bytes(ws, entry["study"], str(entry.get("study_sha256")), "tuning study")
    return table


def write_entry(ws: Workspace, entry: TunedDefaults, study_json: str) -> TunedDefaults:
    """Store ``study_json`` and record ``entry`` (whose study it is) in the workspace's
    table, replacing the method's entry for that scenario (under the caller's lock);
    returns the entry as recorded, citing the stored study."""
    ws.check_writable()
    table = read_table(ws) or {}
    replaced = table.get(entry.method, {}).get(entry.scenario, {}).get("study")
    study_bytes = study_json.encode("utf-8")
    study_sha = sha256_bytes(study_bytes)
    study_rel = f"{FOLDER}/{entry.method}-{entry.scenario}-{study_sha[:16]}.json"
    atomic_write_bytes(ws.root / study_rel, study_bytes, mode=PRIVATE)
    fields = {**entry.to_dict(), "study": study_rel, "study_sha256": study_sha}
    recorded = TunedDefaults(**fields)
    for key in ("method", "scenario"):
        del fields[key]
    table.setdefault(entry.method, {})[entry.scenario] = fields
    text = json.dumps({"format": FORMAT, "methods": table}, indent=2, sort_keys=True) + "\n"
    data = text.encode("utf-8")
    digest = sha256_bytes(data)
    rel = f"{FOLDER}/defaults-{digest[:16]}.json"
    atomic_write_bytes(ws.root / rel, data, mode=PRIVATE)
    old = _record(ws)
    record = {"file": rel, "sha256": digest, "mac": ws.keyed_hash(_META, digest)}
    with ws.catalog.transaction() as cur:
        ws.request_store.set_meta(cur, _META, json.dumps(record, sort_keys=True))
    if old is not None and old["file"] != rel:
        (ws.root / old["file"]).unlink(missing_ok=True)
    if replaced and replaced != study_rel and replaced.startswith(f"{FOLDER}/"):  # uncited
        (ws.root / replaced).unlink(missing_ok=True)
    return recorded


def request_context(
    ws: Workspace, *, label: Any = None, model_id: str | None = None, tuned: bool = True
) -> RequestContext:
    """What a request's tuned defaults must match: the workspace's dataset, the model's
    description (``model_id``, default the newest), the scenario (``"class"`` for a
    ``label``) and the workspace's own table (not read when ``tuned`` is off)."""
    try:
        model = ws.model_row(model_id)["description"]
    except UnbakeError:  # no such model: the request is refused later, in its own words
        model = None
    return RequestContext(
        dataset=ws.catalog.meta("dataset_name"),
        model=model,
        scenario=scenario_of(forget_class=label),
        table=read_table(ws) if tuned else None,
        table_source=str(Path(ws.root) / FOLDER),
        workspace=str(ws.root),
    )
