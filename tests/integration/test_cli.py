"""End to end through the CLI: happy paths and every kind of bad input."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from unbake.cli import app
from unbake.testing.snapshot import workspace_snapshot

runner = CliRunner()
TRAIN = ["train", "--dataset", "digits", "--model", "logreg", "--epochs", "2"]


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def snapshot(root):
    return workspace_snapshot(root)


def assert_one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert err.startswith("error:"), err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in result.output + result.stderr
    for f in fragments:
        assert f in err, err


@pytest.fixture
def trained(tmp_path):
    ws = tmp_path / "ws"
    result = run(*TRAIN, "--workspace", ws, "--json")
    assert result.exit_code == 0, result.output
    return ws, json.loads(result.stdout)


def test_train_forget_evaluate_status_log(trained, tmp_path):
    ws, info = trained
    assert info["n_train"] == 1229  # digits' train split (keyed hash of each ID, seed 0)
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("digits-0001\ndigits-0003\n")
    res = run(
        "forget",
        "--ids-file",
        ids_file,
        "--method",
        "finetune",
        "--param",
        "epochs=1",
        "--workspace",
        ws,
        "--json",
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["n_samples"] == 2 and out["model_before"] == info["model_id"]
    res = run("evaluate", "--workspace", ws, "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["ta"] > 50
    st = json.loads(run("status", "--workspace", ws, "--json").stdout)
    assert st["samples"] == {"active": 1227, "forgotten": 2}
    assert st["splits"] == {"train": 1227, "val": 180, "test": 388}
    assert st["dataset"]["test_fraction"] == "0.2" and st["dataset"]["split_seed"] == "0"
    log = json.loads(run("log", "--workspace", ws, "--json").stdout)["requests"]
    assert [r["method"] for r in log] == ["finetune"]
    assert run("log", "--workspace", ws).exit_code == 0
    assert run("status", "--workspace", ws).exit_code == 0


def test_methods_lists_flags():
    res = run("methods", "--json")
    rows = {r["method"]: r for r in json.loads(res.stdout)["methods"]}
    assert rows["retrain"]["exact"] is True and rows["neggrad"]["needs_retain_data"] is False
    assert rows["retrain"]["kind"] == "exact" and rows["salun"]["kind"] == "approximate"
    assert rows["neggrad"]["reads"] == ["model", "forget"] and rows["salun"]["cost"]
    assert "random forgetting" in rows["influence"]["limits"]


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["--ids", "nope-1"], ["Unknown sample IDs ['nope-1']"]),
        ([], ["selects no samples"]),
        (
            ["--ids", "digits-0001", "--method", "bogus"],
            ["Unknown unlearning method 'bogus'", "retrain"],
        ),
        (
            ["--ids", "digits-0001", "--method", "finetune", "--param", "lr=-1"],
            ["The 'lr' parameter of finetune must be a float in (0, inf). Got -1 instead."],
        ),
        (["--ids", "digits-0001", "--param", "epochs"], ["is not key=value"]),
        (
            ["--ids", "digits-0001", "--method", "finetune", "--param", "colour=1"],
            ["no parameter 'colour'"],
        ),
        (["--class", "42"], ["Class '42' does not exist", "'0', '1'", "index 0..9"]),
        (["--class", "A"], ["Class 'A' does not exist"]),
        (["--ids", "digits-0001", "--model", "model-nope"], ["No model 'model-nope'"]),
        (["--ids-file", "/no/such/file"], ["Cannot read --ids-file"]),
    ],
)
def test_forget_bad_input(trained, args, fragments):
    ws, _ = trained
    before = snapshot(ws)
    assert_one_line_error(run("forget", *args, "--workspace", ws), *fragments)
    assert snapshot(ws) == before


def test_already_forgotten_ids(trained):
    ws, _ = trained
    assert (
        run(
            "forget",
            "--ids",
            "digits-0001",
            "--method",
            "finetune",
            "--param",
            "epochs=1",
            "--workspace",
            ws,
        ).exit_code
        == 0
    )
    held = "digits-0002,digits-0004"  # a validation and a test sample: no model changes
    res = run("forget", "--ids", held, "--workspace", ws, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["n_held_out"] == 2
    before = snapshot(ws)
    for ids in ("digits-0001", "digits-0004"):
        assert_one_line_error(run("forget", "--ids", ids, "--workspace", ws), "already forgotten")
    assert snapshot(ws) == before


def test_tampered_checkpoint(trained):
    ws, _ = trained
    ckpt = next((ws / "checkpoints").glob("*.safetensors"))
    ckpt.write_bytes(ckpt.read_bytes()[:-4] + b"\x00\x00\x00\x00")
    before = snapshot(ws)
    assert_one_line_error(
        run("forget", "--ids", "digits-0001", "--workspace", ws), "corrupt or tampered"
    )
    assert_one_line_error(run("evaluate", "--workspace", ws), "corrupt or tampered")
    assert snapshot(ws) == before


def test_train_bad_input_creates_nothing(tmp_path):
    ws = tmp_path / "ws"
    assert_one_line_error(
        run("train", "--dataset", "imagenet", "--workspace", ws), "Unknown dataset 'imagenet'"
    )
    assert_one_line_error(
        run("train", "--dataset", "csv", "--path", tmp_path / "x.csv", "--workspace", ws),
        "does not exist",
    )
    assert_one_line_error(
        run("train", "--epochs", "-1", "--workspace", ws), "'epochs' training parameter"
    )
    assert_one_line_error(
        run("train", "--model", "cnn", "--dataset", "digits", "--lr", "0", "--workspace", ws),
        "'lr'",
    )
    assert not ws.exists()


def test_train_wrong_shape_model_creates_nothing(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("a,b,label\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(30)))
    ws = tmp_path / "ws"
    assert_one_line_error(
        run("train", "--dataset", "csv", "--path", csv, "--model", "cnn", "--workspace", ws),
        "cnn needs image input",
    )
    assert not ws.exists()


def test_missing_workspace(tmp_path):
    assert_one_line_error(run("status", "--workspace", tmp_path / "none"), "No workspace at")


def test_demo_writes_reports(tmp_path):
    ws = tmp_path / "demo"
    res = run("demo", "--methods", "finetune,neggrad", "--epochs", "3", "--workspace", ws, "--json")
    assert res.exit_code == 0, res.output
    both = json.loads(res.stdout)
    assert both["class"]["scenario"] == "class" and both["class"]["forget_class"] == 0
    assert {r["vs_original"] for r in both["class"]["rows"][1:]} <= {"better", "slightly", "no"}
    assert (ws / "report-class.md").exists()
    report = both["random"]
    assert [r["method"] for r in report["rows"]] == [
        "original",
        "retrain_seed",
        "finetune",
        "neggrad",
    ]
    for row in report["rows"]:
        assert set(row) >= {"method", "fa", "ra", "ta", "mia", "avg_gap", "seconds", "speedup"}
    assert json.loads((ws / "report.json").read_text())["dataset"] == "digits"
    assert "| method |" in (ws / "report.md").read_text()
    assert (ws / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_real_process_exit_code_and_no_traceback(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "unbake.cli",
            "forget",
            "--ids",
            "x",
            "--workspace",
            str(tmp_path / "none"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: No workspace at") and "Traceback" not in proc.stderr


def _people_csv(path, drop_subjects=()):
    lines = ["uid,person,f1,f2,target"]
    for i in range(120):
        if f"p{i % 30}" not in drop_subjects:
            lines.append(f"u{i},p{i % 30},{(i % 7) / 7},{(i % 3) + 0.1 * (i % 5)},{'ABC'[i % 3]}")
    path.write_text("\n".join(lines) + "\n")
    return path


CSV_TRAIN = [
    "train",
    "--dataset",
    "csv",
    "--label",
    "target",
    "--id-column",
    "uid",
    "--subject-column",
    "person",
    "--model",
    "logreg",
    "--epochs",
    "2",
]


def test_csv_workspace_forgets_a_subject_from_another_directory(tmp_path, monkeypatch):
    _people_csv(tmp_path / "people.csv")
    monkeypatch.chdir(tmp_path)
    ws = tmp_path / "ws"
    res = run(*CSV_TRAIN, "--path", "people.csv", "--workspace", ws, "--json")
    assert res.exit_code == 0, res.output
    st = json.loads(run("status", "--workspace", ws, "--json").stdout)
    assert st["subjects"] == 30
    monkeypatch.chdir("/")
    side = _subject_sides(ws)
    person = next(p for p, split in sorted(side.items()) if split == "train")
    res = run("forget", "--subject", person, "--workspace", ws, "--json")
    assert res.exit_code == 0, res.output
    n = json.loads(res.stdout)["n_samples"]
    assert n == 4  # 120 rows over 30 people, all on one side of the split
    st = json.loads(run("status", "--workspace", ws, "--json").stdout)
    assert st["samples"]["forgotten"] == n and st["subjects"] == 29
    assert_one_line_error(
        run("forget", "--subject", person, "--workspace", ws), "already forgotten"
    )
    assert_one_line_error(
        run("forget", "--subject", "nobody", "--workspace", ws), "No samples belong to subject"
    )


def _subject_sides(ws):
    """subject -> the one split holding all of its rows (from `unbake samples --json`)."""
    res = run("samples", "--workspace", ws, "--json")
    assert res.exit_code == 0, res.output
    sides: dict[str, set] = {}
    for row in json.loads(res.stdout)["samples"]:
        sides.setdefault(row["subject"], set()).add(row["split"])
    assert all(len(v) == 1 for v in sides.values()), sides
    return {subject: v.pop() for subject, v in sides.items()}


def test_forgotten_subject_deleted_from_csv_then_evaluate_forget_train(tmp_path):
    source = _people_csv(tmp_path / "people.csv")
    ws = tmp_path / "ws"
    assert run(*CSV_TRAIN, "--path", source, "--workspace", ws).exit_code == 0
    sides = _subject_sides(ws)
    first, second = [p for p, split in sorted(sides.items()) if split == "train"][:2]
    assert run("forget", "--subject", first, "--workspace", ws).exit_code == 0
    _people_csv(source, drop_subjects={first})  # the person's raw rows are erased too
    res = run("evaluate", "--workspace", ws, "--json")
    assert res.exit_code == 0, res.output
    res = run("forget", "--subject", second, "--workspace", ws, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["n_samples"] == 4
    res = run("train", "--model", "logreg", "--epochs", "2", "--workspace", ws, "--json")
    assert res.exit_code == 0, res.output
    gone = json.loads(run("samples", "--forgotten", "--workspace", ws, "--json").stdout)
    assert len(gone["samples"]) == 8 and {r["split"] for r in gone["samples"]} == {"train"}
    # an active (never forgotten) subject's rows deleted: an error naming them
    third = next(p for p, split in sorted(sides.items()) if split == "test")
    _people_csv(source, drop_subjects={first, third})
    before = snapshot(ws)
    assert_one_line_error(
        run("evaluate", "--workspace", ws), "4 samples that were never forgotten are missing"
    )
    assert snapshot(ws) == before


def test_samples_lists_ids_subjects_splits_and_label_names(tmp_path):
    source = _people_csv(tmp_path / "people.csv")
    ws = tmp_path / "ws"
    res = run(*CSV_TRAIN, "--path", source, "--val-fraction", "0.2", "--workspace", ws)
    assert res.exit_code == 0, res.output
    person = next(p for p, split in sorted(_subject_sides(ws).items()) if split == "train")
    res = run("samples", "--subject", person, "--workspace", ws, "--json")
    rows = json.loads(res.stdout)["samples"]
    assert [r["sample_id"] for r in rows] == [f"u{int(person[1:]) + 30 * k}" for k in range(4)]
    assert all(r["label"] in {"A", "B", "C"} and r["status"] == "active" for r in rows)
    text = run("samples", "--subject", person, "--workspace", ws)
    assert text.exit_code == 0 and rows[0]["sample_id"] in text.stdout and "train" in text.stdout
    st = run("status", "--workspace", ws)
    assert "validation (fraction 0.2)" in st.stdout and "test (fraction 0.2)" in st.stdout
    res = run("forget", "--class", "B", "--method", "retrain", "--workspace", ws, "--json")
    assert res.exit_code == 0, res.output
    log = json.loads(run("log", "--workspace", ws, "--json").stdout)["requests"]
    assert log[-1]["selector"] == {"class": "B"}
    assert_one_line_error(
        run("forget", "--class", "D", "--workspace", ws), "Class 'D' does not exist", "'A', 'B'"
    )
    assert_one_line_error(
        run("train", "--split-seed", "3", "--workspace", ws), "split_seed=0, not 3"
    )


@pytest.mark.parametrize(
    "content,fragment",
    [
        (b"f1,label\n", "has a header but no data rows"),
        (b"\x00\xff\xfe\x89binary\xff", "not UTF-8 text"),
        (b"f1,label\n" + b"".join(b"%d,A\n" % i for i in range(40)), "at least two classes"),
        (b"f1,label\n1,A\n", "fewer than the"),
        (b"f1,label\n1,A\n2,B\n", "fewer than the"),
        (
            b"uid,f1,label\n"
            + b"".join(
                b"%s,%d,%d\n" % (b"" if i == 2 else b"u%d" % i, i, i % 2) for i in range(30)
            ),
            "Empty sample IDs in rows 2",
        ),
    ],
)
def test_degenerate_csv_refused_and_nothing_created(tmp_path, content, fragment):
    source = tmp_path / "bad.csv"
    source.write_bytes(content)
    ws = tmp_path / "ws"
    extra = ["--id-column", "uid"] if content.startswith(b"uid") else []
    assert_one_line_error(
        run("train", "--dataset", "csv", "--path", source, *extra, "--workspace", ws), fragment
    )
    assert not ws.exists()


def test_held_out_subject_forgotten_then_deleted_from_csv(tmp_path):
    """A subject all in test can be erased (no model changes), then deleted from the CSV."""
    from unbake.evaluation import accuracy
    from unbake.workspace import Workspace

    source = _people_csv(tmp_path / "people.csv")
    ws = tmp_path / "ws"
    assert run(*CSV_TRAIN, "--path", source, "--workspace", ws).exit_code == 0
    sides = _subject_sides(ws)
    held = next(p for p, split in sorted(sides.items()) if split == "test")
    with Workspace.open(ws) as w:  # the split, read through the API
        ids = [r["sample_id"] for r in w.samples(subject=held)]
        assert {r["split"] for r in w.samples(subject=held)} == {"test"}
    models = json.loads(run("status", "--workspace", ws, "--json").stdout)["models"]
    res = run("forget", "--subject", held, "--workspace", ws, "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert (out["n_samples"], out["n_held_out"], out["model_changed"]) == (0, 4, False)
    assert out["model_after"] == out["model_before"] == models[0]["model_id"]
    assert json.loads(run("status", "--workspace", ws, "--json").stdout)["models"] == models
    (req,) = json.loads(run("log", "--workspace", ws, "--json").stdout)["requests"]
    assert req["method"] == "none" and req["exact"] == 1 and req["metrics"] is None
    assert req["hash_before"] == req["hash_after"]
    text = run("log", "--workspace", ws)
    assert text.exit_code == 0 and "no model changed" in text.stdout and "0 + 4 held" in text.stdout
    gone = json.loads(run("samples", "--forgotten", "--workspace", ws, "--json").stdout)
    assert sorted(r["sample_id"] for r in gone["samples"]) == sorted(ids)
    with Workspace.open(ws) as w:  # TA without the erased rows
        test = w.dataset().test
        expected = accuracy(w.load_model(), test.subset(~test.mask_of(ids)))
    for step in ("forgotten", "deleted from the source"):
        res = run("evaluate", "--workspace", ws, "--json")
        assert res.exit_code == 0, (step, res.output)
        assert json.loads(res.stdout)["ta"] == pytest.approx(expected, abs=1e-3), step
        _people_csv(source, drop_subjects={held})  # the person's raw rows are erased too
    other = next(p for p, split in sorted(sides.items()) if split == "train")
    res = run("forget", "--subject", other, "--workspace", ws, "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["n_samples"] == 4, res.output
    res = run("train", "--model", "logreg", "--epochs", "2", "--workspace", ws, "--json")
    assert res.exit_code == 0, res.output
    assert_one_line_error(run("forget", "--subject", held, "--workspace", ws), "already forgotten")


def test_version_is_the_distributions():
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"unbake {version('unbake')}"
