"""The bad-input contract, everywhere: one line, exit 2, workspace unchanged, never a traceback.

Each case from issue 12 is reproduced here, and a property-based fuzzer drives the CLI
with generated IDs, parameters, classes and CSV files.
"""

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.integration.test_cli import assert_one_line_error, run, snapshot
from tests.waiting import HUNG_AFTER
from unbake.workspace.workspace import CATALOG

MARKUP_SUBJECT = "[red]alice[/red]"


def write_csv(path: Path, n: int = 90, seed: int = 0) -> Path:
    """A tiny numeric table: 3 classes, 4 features, IDs r000…, 10 subjects (one in markup)."""
    rng = np.random.default_rng(seed)
    lines = ["uid,person,f0,f1,f2,f3,y"]
    for i in range(n):
        y = i % 3
        x = rng.normal(loc=y, size=4)
        person = MARKUP_SUBJECT if i % 10 == 0 else f"s{i % 10}"
        lines.append(f"r{i:03d},{person},{','.join(f'{v:.4f}' for v in x)},{y}")
    path.write_text("\n".join(lines) + "\n")
    return path


CSV_TRAIN = ["--dataset", "csv", "--label", "y", "--id-column", "uid", "--subject-column", "person"]
FAST = ["--model", "logreg", "--epochs", "1"]


@pytest.fixture(scope="module")
def template():
    """A trained workspace on the tiny CSV; tests copy it, never change it.

    It lives in a folder anyone may read, so an unprivileged process can reload the CSV.
    """
    root = Path(tempfile.mkdtemp(prefix="unbake-contract-"))
    root.chmod(0o755)
    csv = write_csv(root / "people.csv")
    ws = root / "ws"
    res = run("train", *CSV_TRAIN, "--path", csv, *FAST, "--workspace", ws, "--json")
    assert res.exit_code == 0, res.output
    yield ws
    shutil.rmtree(root)


def fresh(template: Path, dst: Path) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(template, dst)
    return dst


@pytest.fixture
def ws(template, tmp_path):
    return fresh(template, tmp_path / "ws")


def strict_json(text: str):
    def refuse(name):
        raise AssertionError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


# --- inputs that escaped the contract before --------------------------------------


def test_binary_ids_file(ws, tmp_path):
    before = snapshot(ws)
    ids = tmp_path / "ids.bin"
    ids.write_bytes(b"\xff\xfe\x00r001\n\x80")
    res = run("forget", "--ids-file", ids, "--workspace", ws)
    assert_one_line_error(res, "not UTF-8", "one sample ID per line")
    assert snapshot(ws) == before


@pytest.mark.parametrize("device", ["tpu", "cuda:99", "", "cpu:x"])
def test_unknown_device(ws, device):
    before = snapshot(ws)
    res = run("forget", "--ids", "r001", "--device", device, "--workspace", ws)
    assert_one_line_error(res, "evice")
    assert snapshot(ws) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_cpu_machine(ws):
    before = snapshot(ws)
    for cmd in (["forget", "--ids", "r001"], ["train", *FAST]):
        res = run(*cmd, "--device", "cuda", "--workspace", ws)
        assert_one_line_error(res, "not available", "cpu")
    assert snapshot(ws) == before


@pytest.mark.parametrize(
    "cmd", [["status"], ["log"], ["evaluate"], ["forget", "--ids", "x"], ["demo"]]
)
def test_workspace_that_is_a_file(tmp_path, cmd):
    file = tmp_path / "not-a-folder"
    file.write_text("hello")
    res = run(*cmd, "--workspace", file)
    assert_one_line_error(res, "is a file")
    assert file.read_text() == "hello"


def test_train_with_workspace_that_is_a_file(tmp_path):
    file = tmp_path / "not-a-folder"
    file.write_text("hello")
    res = run("train", "--dataset", "digits", *FAST, "--workspace", file)
    assert_one_line_error(res, "is a file")
    assert file.read_text() == "hello"


def _junk(ws):
    (ws / CATALOG).write_bytes(os.urandom(5000))


def _damaged_page(ws):
    data = bytearray((ws / CATALOG).read_bytes())
    page = 4096  # a page of a table's b-tree, past the header page
    data[page : page + 4096] = b"\xde\xad" * 2048
    (ws / CATALOG).write_bytes(bytes(data))


def _sql(statement):
    def damage(ws):
        conn = sqlite3.connect(ws / CATALOG)
        conn.execute(statement)
        conn.commit()
        conn.close()

    return damage


DAMAGE = {
    "junk": _junk,
    "damaged-page": _damaged_page,
    "dropped-table": _sql("DROP TABLE models"),
    "dropped-column": _sql("ALTER TABLE requests DROP COLUMN info"),
    "spec-junk": _sql("UPDATE meta SET value = 'junk{' WHERE key = 'dataset'"),
    "spec-not-object": _sql("UPDATE meta SET value = '[1, 2]' WHERE key = 'dataset'"),
    "catalog-a-folder": lambda ws: ((ws / CATALOG).unlink(), (ws / CATALOG).mkdir()),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
@pytest.mark.parametrize(
    "cmd", [["status"], ["log"], ["evaluate"], ["forget", "--ids", "r001"], ["train", *FAST]]
)
def test_damaged_catalog(ws, damage, cmd):
    DAMAGE[damage](ws)
    before = snapshot(ws)
    res = run(*cmd, "--workspace", ws)
    if damage.startswith("spec-") and cmd == ["log"]:
        assert res.exit_code == 0, res.output  # the log does not need the dataset
    else:
        assert_one_line_error(res)
        assert any(w in res.stderr for w in ("damaged", "not an unbake catalog", "No workspace"))
    assert snapshot(ws) == before


def test_requests_with_junk_json_are_a_damaged_catalog(ws):
    assert run("forget", "--class", "1", "--method", "neggrad", "--workspace", ws).exit_code == 0
    _sql("UPDATE requests SET selector = '{oops'")(ws)
    assert_one_line_error(run("log", "--workspace", ws), "damaged", "selector")


# --- read-only workspaces and stray journals ---------------------------------------

_READER = """
import json, sys
from typer.testing import CliRunner
from unbake.cli import app
out = {}
for name, args in json.loads(sys.argv[1]).items():
    res = CliRunner().invoke(app, args)
    out[name] = [res.exit_code, res.stdout, res.stderr]
print(json.dumps(out))
"""


def _run_unprivileged(commands: dict[str, list[str]]) -> dict[str, list]:
    """Run CLI commands in a process that cannot write the workspace (root ignores modes)."""
    prefix = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: cannot drop write permission")
        prefix = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [*prefix, sys.executable, "-c", _READER, json.dumps(commands)],
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
        timeout=HUNG_AFTER,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture
def readonly_copy(template):
    """A copy of the template readable by anyone, then made read-only (chmod -R a-w)."""
    outer = Path(tempfile.mkdtemp(prefix="unbake-ro-"))
    outer.chmod(0o755)
    ws = fresh(template, outer / "ws")
    yield ws
    for path in [ws, *ws.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o200)
    shutil.rmtree(outer)


def _make_readonly(ws: Path) -> None:
    """What an operator does to share a workspace read-only: readable by anyone (a
    workspace is private, 0600/0700, by default), and writable by none."""
    for path in [*ws.rglob("*"), ws]:
        readable = 0o555 if path.is_dir() else 0o444
        path.chmod((path.stat().st_mode | readable) & ~0o222)


def test_read_only_workspace_can_be_read(readonly_copy):
    ws = readonly_copy
    expected = strict_json(run("status", "--workspace", ws, "--json").stdout)
    _make_readonly(ws)
    before = snapshot(ws)
    w = str(ws)
    out = _run_unprivileged(
        {
            "status": ["status", "--workspace", w, "--json"],
            "log": ["log", "--workspace", w],
            "evaluate": ["evaluate", "--workspace", w, "--json"],
            "forget": ["forget", "--ids", "r001", "--workspace", w],
            "train": ["train", "--model", "logreg", "--epochs", "1", "--workspace", w],
        }
    )
    for name in ("status", "log", "evaluate"):
        code, _, stderr = out[name]
        assert code == 0, (name, stderr)
    assert strict_json(out["status"][1]) == expected
    assert strict_json(out["evaluate"][1])["ra"] > 0
    for name in ("forget", "train"):
        code, _, stderr = out[name]
        assert code == 2 and len(stderr.strip().splitlines()) == 1, (name, stderr)
        assert "read-only" in stderr and "chmod" in stderr
    assert snapshot(ws) == before


def _leave_killed_writer(catalog: Path) -> None:
    """A writer killed with SIGKILL half-way through a transaction that spilled to disk
    (in WAL mode: uncommitted frames in the -wal file)."""
    code = (
        "import os, signal, sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute('PRAGMA cache_size=1')\n"
        "c.execute('BEGIN IMMEDIATE')\n"
        "c.execute(\"UPDATE samples SET content_hash = 'x'\")\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(catalog)])
    assert proc.returncode == -signal.SIGKILL
    assert catalog.with_name(CATALOG + "-wal").stat().st_size > 0


def _uncommitted_rows(catalog: Path) -> int:
    conn = sqlite3.connect(catalog)
    try:
        return conn.execute("SELECT COUNT(*) FROM samples WHERE content_hash = 'x'").fetchone()[0]
    finally:
        conn.close()


def test_killed_writer_is_rolled_back(ws):
    _leave_killed_writer(ws / CATALOG)
    res = run("status", "--workspace", ws, "--json")
    assert res.exit_code == 0, res.output
    assert _uncommitted_rows(ws / CATALOG) == 0
    assert run("evaluate", "--workspace", ws).exit_code == 0


def test_stale_journal_is_swept(ws):
    (ws / (CATALOG + "-journal")).write_bytes(b"")  # not hot: SQLite ignores it, we sweep it
    (ws / "checkpoints" / ".x.safetensors.unbake-tmp").write_bytes(b"half")
    assert run("status", "--workspace", ws).exit_code == 0
    assert not (ws / (CATALOG + "-journal")).exists()
    assert not (ws / "checkpoints" / ".x.safetensors.unbake-tmp").exists()


def test_read_only_workspace_after_a_killed_writer(readonly_copy):
    """The committed state is read; the killed writer's frames are ignored; nothing written."""
    ws = readonly_copy
    expected = strict_json(run("status", "--workspace", ws, "--json").stdout)
    _leave_killed_writer(ws / CATALOG)
    _make_readonly(ws)
    before = snapshot(ws)
    out = _run_unprivileged({"status": ["status", "--workspace", str(ws), "--json"]})
    code, stdout, stderr = out["status"]
    assert code == 0, stderr
    assert strict_json(stdout) == expected
    assert snapshot(ws) == before


# --- output: JSON and literal text ---------------------------------------------------


def test_json_has_no_nan(ws):
    res = run("evaluate", "--workspace", ws, "--json")  # nothing forgotten: FA is undefined
    assert res.exit_code == 0, res.output
    out = strict_json(res.stdout)
    assert out["fa"] is None and out["ra"] > 0


def test_report_json_is_strict():
    from unbake.evaluation import Evaluation
    from unbake.evaluation.compare import Comparison, ComparisonRow

    nan = float("nan")
    metrics = Evaluation({"fa": 100.0, "ra": 99.0, "ta": nan, "mia": 50.0})
    row = ComparisonRow("original", "mlp", metrics, 0.5, 0.1, nan)
    report = strict_json(Comparison("digits", 10, 1, 0, float("inf"), [row]).to_json())
    assert report["attack_strength"] is None
    assert report["rows"][0]["speedup"] is None and report["rows"][0]["ta"] is None
    assert report["rows"][0]["fa"] == 100.0


def test_user_text_is_never_markup(ws, tmp_path):
    res = run("forget", "--subject", "[bold]bob[/bold]", "--workspace", ws)
    assert_one_line_error(res, "'[bold]bob[/bold]'")
    res = run("forget", "--ids", "[red]x[/red],:smile:", "--workspace", ws)
    assert_one_line_error(res, "[red]x[/red]", ":smile:")
    res = run("forget", "--subject", MARKUP_SUBJECT, "--method", "neggrad", "--workspace", ws)
    assert res.exit_code == 0, res.output
    logged = run("log", "--workspace", ws).stdout
    assert MARKUP_SUBJECT not in logged and "subject_hmac" in logged  # named by keyed hash
    dup = tmp_path / "dup.csv"
    dup.write_text("uid,f0,y\n[a],1,0\nb,2,1\n[a],3,0\nc,4,1\n")
    res = run(
        "train", *CSV_TRAIN[:4], "--id-column", "uid", "--path", dup, "--workspace", tmp_path / "d"
    )
    assert_one_line_error(res, "Duplicate sample IDs ['[a]']", "rows 0, 2")
    assert not (tmp_path / "d").exists()


def test_control_characters_stay_on_one_line(ws):
    res = run("forget", "--subject", "a\nb\x1b[31m", "--workspace", ws)
    assert_one_line_error(res)
    assert "\x1b" not in res.stderr


# --- the CLI's own errors -------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [["bogus"], ["forget", "--class"], ["forget", "--seed", "x"], ["status", "--nope"]],
)
def test_usage_errors_are_one_line(args, ws):
    before = snapshot(ws)
    res = run(*args, "--workspace", ws)
    assert_one_line_error(res, "--help")
    assert snapshot(ws) == before


def test_an_unexpected_failure_is_one_line_not_a_traceback(ws, monkeypatch):
    from unbake.workspace import Workspace

    def broken(self):
        raise RuntimeError("boom")

    monkeypatch.setattr(Workspace, "status", broken)
    res = run("status", "--workspace", ws)
    assert res.exit_code == 1
    err = res.stderr.strip()
    assert err.startswith("error: internal error: RuntimeError: boom") and "report" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in res.output


def test_warnings_never_break_the_one_line_error(ws, monkeypatch):
    import warnings

    from unbake.exceptions import WorkspaceError
    from unbake.workspace import Workspace

    real = Workspace.status

    def noisy(self, fail):
        warnings.warn("invalid value\nencountered", RuntimeWarning, stacklevel=1)
        if fail:
            raise WorkspaceError("broken; fix it.")
        return real(self)

    monkeypatch.setattr(Workspace, "status", lambda self: noisy(self, True))
    assert_one_line_error(run("status", "--workspace", ws), "broken; fix it.")
    monkeypatch.setattr(Workspace, "status", lambda self: noisy(self, False))
    res = run("status", "--workspace", ws, "--json")
    assert res.exit_code == 0 and strict_json(res.stdout)["models"]
    assert res.stderr.strip() == "warning: invalid value\\nencountered"


def test_failed_first_train_keeps_a_folder_that_existed(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    res = run("train", "--dataset", "digits", *FAST, "--device", "tpu", "--workspace", folder)
    assert_one_line_error(res, "device")
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


# --- the fuzzer ------------------------------------------------------------------------

FUZZ = settings(  # about 20 s for the three fuzzers on 2 cores
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
ID_POOL = [f"r{i:03d}" for i in range(90)]
SPECIAL = ["nan", "inf", "-inf", "1e400", "0.01", "-1", "0", "true", "null", "[1]", "{}", '"x"']


def _small(text: str) -> bool:
    """No generated value may ask for a huge number of epochs or samples."""
    try:
        value = json.loads(text)
    except ValueError:
        return True
    return not isinstance(value, (int, float)) or abs(value) <= 10 or value != value


values = st.one_of(
    st.integers(-2, 4).map(str), st.sampled_from(SPECIAL), st.text(max_size=8).filter(_small)
)


def param_lists(keys: list[str]):
    pairs = st.builds("{}={}".format, st.sampled_from(keys), values)
    return st.one_of(st.just([]), st.lists(st.one_of(pairs, st.text(max_size=10)), max_size=3))


params = param_lists(["epochs", "lr", "batch_size", "damping", "bogus", "", "seed"])
id_lists = st.lists(st.one_of(st.sampled_from(ID_POOL), st.text(max_size=12)), max_size=6)
selectors = st.one_of(
    st.tuples(st.just("--ids"), id_lists.map(",".join)),
    st.tuples(
        st.just("--ids-file"),
        st.one_of(st.binary(max_size=40), id_lists.map(lambda ids: "\n".join(ids).encode())),
    ),
    st.tuples(st.just("--subject"), st.one_of(st.sampled_from(["s1", MARKUP_SUBJECT]), st.text())),
    st.tuples(st.just("--class"), st.one_of(st.integers(-2, 4).map(str), st.text(max_size=5))),
    st.just(None),
)
methods = st.sampled_from(["retrain", "finetune", "neggrad", "influence", "sisa", "bogus"])


def assert_contract(res, ws: Path | None, before: dict | None) -> None:
    """Exit 0 (with strict JSON) or 2 (one line, workspace untouched); never a traceback."""
    assert "Traceback" not in res.output + res.stderr, res.output + res.stderr
    assert res.exit_code in (0, 2), (res.exit_code, res.stderr)
    event(f"exit {res.exit_code}")
    if res.exit_code == 0:
        strict_json(res.stdout)
        return
    err = res.stderr.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1, err
    if before is None:
        assert ws is None or not ws.exists(), "a refused train left a workspace behind"
    else:
        assert snapshot(ws) == before, "a refused command changed the workspace"


@FUZZ
@given(selector=selectors, method=methods, params=params)
def test_fuzz_forget(template, selector, method, params):
    with tempfile.TemporaryDirectory() as tmp:
        ws = fresh(template, Path(tmp) / "ws")
        args = ["forget", "--method", method, "--workspace", str(ws), "--json"]
        for p in params:
            args += ["--param", p]
        if selector is not None:
            flag, value = selector
            if flag == "--ids-file":
                (Path(tmp) / "ids").write_bytes(value)
                value = str(Path(tmp) / "ids")
            args += [flag, value]
        before = snapshot(ws)
        assert_contract(run(*args), ws, before)


cells = st.one_of(
    st.sampled_from(["", "1", "0", "2", "2.5", "-1", "nan", "inf", "x", "[b]", "r1", "s1"]),
    st.text(max_size=4),
)
rows = st.lists(st.lists(cells, min_size=0, max_size=6), max_size=8)
headers = st.lists(
    st.sampled_from(["uid", "person", "f0", "f1", "y", "y", "", "[x]"]), min_size=0, max_size=6
)


numbers = st.sampled_from(["0", "1", "2", "0.5", "-1.25", "3"])
plausible = st.lists(  # a well-formed table: uid, person, f0, f1, y
    st.tuples(
        st.sampled_from(ID_POOL), st.sampled_from(["s1", "s2", ""]), numbers, numbers, numbers
    ).map(list),
    max_size=12,
    unique_by=lambda row: row[0],
)


def _csv_text(header: list[str], body: list[list[str]]) -> bytes:
    return "\n".join(",".join(r) for r in [header, *body]).encode("utf-8", "surrogatepass")


@FUZZ
@given(
    content=st.one_of(
        st.builds(_csv_text, st.just(["uid", "person", "f0", "f1", "y"]), plausible),
        st.builds(_csv_text, headers, rows),
        st.binary(max_size=60),
    ),
    with_ids=st.booleans(),
)
def test_fuzz_csv(content, with_ids):
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "data.csv"
        csv.write_bytes(content)
        ws = Path(tmp) / "ws"
        flags = CSV_TRAIN if with_ids else CSV_TRAIN[:4]
        res = run("train", *flags, "--path", csv, *FAST, "--workspace", ws, "--json")
        assert_contract(res, ws, None)
        if res.exit_code == 0:
            assert_contract(run("evaluate", "--workspace", ws, "--json"), ws, snapshot(ws))


@FUZZ
@given(
    strategy=st.sampled_from(["monolithic", "sisa", "certified", "bogus"]),
    params=param_lists(["shards", "slices", "aggregation", "epsilon", "lam", "bogus", ""]),
)
def test_fuzz_train_params(template, strategy, params):
    """Training on an existing workspace with generated strategy parameters."""
    with tempfile.TemporaryDirectory() as tmp:
        ws = fresh(template, Path(tmp) / "ws")
        args = ["train", *FAST, "--strategy", strategy, "--workspace", str(ws), "--json"]
        for p in params:
            args += ["--param", p]
        before = snapshot(ws)
        assert_contract(run(*args), ws, before)
