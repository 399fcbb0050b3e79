"""The report renderer: Markdown, the trade-off plot and one self-contained HTML file."""

import base64
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from unbake.cli import app
from unbake.exceptions import InvalidParameterError
from unbake.report import load_result, plot_tradeoff, render_html, render_markdown, write_report

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("original", "retrain_seed", "retrain", "sisa", "certified", "scrub", "finetune")


def _row(method, guarantee, auc, speedup, ta_retained):
    audited = method != "retrain_seed"
    return {
        "part": "tradeoff",
        "method": method,
        "model": "mlp",
        "fa": 97.0,
        "ra": 99.0,
        "ta": 94.0,
        "mia": 51.0,
        "mia_efficacy": 40.0,
        "avg_gap": 0.5,
        "seconds": 0.1,
        "speedup": speedup,
        "guarantee": guarantee,
        "ta_retained": ta_retained,
        "ulira_auc": auc if audited else None,
        "ulira_tpr_at_1pct_fpr": 0.02 if audited else None,
        "detectable_auc_gap": 0.12 if audited else None,
        "verdict": ("indistinguishable" if abs(auc - 0.5) < 0.1 else "distinguishable")
        if audited
        else None,
        "klom_forget": 0.3 if audited else None,
        "challenge_score": 0.2 if audited else None,
        "ghost_gap": 0.1 if audited else None,
        "audit_s": 3.0 if audited else None,
    }


@pytest.fixture
def result():
    rows = [
        _row("original", "—", 0.80, None, 100.0),
        _row("retrain_seed", "exact", 0.5, 1.0, 99.5),
        _row("retrain", "exact", 0.51, 1.0, 99.6),
        _row("sisa", "exact", 0.49, 3.0, 97.0),
        _row("certified", "certified", 0.55, 40.0, 88.0),
        _row("scrub", "none", 0.7, 8.0, 98.0),
        _row("finetune", "none", 0.62, 12.0, 99.0),
    ]
    bank = [
        {"part": "bank", "backend": "sequential", "workers": 1, "seconds": 10.0, "speedup": 1.0},
        {"part": "bank", "backend": "ray", "workers": 2, "seconds": 5.5, "speedup": 1.82,
         "efficiency": 0.91, "startup_s": 4.0, "bitwise_equal": True},
    ]  # fmt: skip
    return {
        "benchmark": "tradeoff",
        "quick": True,
        "dataset": "digits",
        "date": "2026-11-30T00:00:00+00:00",
        "machine": {"cpu": "test cpu", "cores": 2, "torch": "2.13.0", "device": "cpu"},
        "config": {"references": 8, "family_references": 8, "n_forget": 123, "n_train": 1229},
        "rows": rows + bank,
        "summary": {
            "original_class_auc": 1.0,
            "retrain_auc": 0.51,
            "ray_parallel_efficiency": 0.91,
            "targets_met": {"original_class_auc": True, "ray_parallel_efficiency": True},
        },
    }


def _png_in(page: str) -> bytes:
    found = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(found) == 1
    return base64.b64decode(found[0])


def test_html_is_self_contained_with_every_row_and_the_plot(result):
    page = render_html(result)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert _png_in(page).startswith(b"\x89PNG\r\n\x1a\n")
    # nothing to fetch: no external script, stylesheet, image, font or frame
    assert not re.search(r"<(script|link|iframe|object|embed)\b", page, re.I)
    assert not re.search(r"(src|href)\s*=\s*[\"'](?!data:)", page, re.I)
    assert "url(" not in page and "@import" not in page
    cells = re.findall(r'<td class="text">([^<]*)</td>', page)
    for method in METHODS:
        assert method in cells
    assert page.count("<table>") == 3  # trade-off, population attacks, bank
    assert "0.910" in page and "target met" in page  # Ray's efficiency and its target


def test_html_escapes_text(result):
    result["rows"][5]["method"] = "<b>scrub</b>"
    page = render_html(result)
    assert "<b>scrub</b>" not in page and "&lt;b&gt;scrub&lt;/b&gt;" in page


def test_markdown_has_a_row_per_method_and_the_bank(result):
    md = render_markdown(result)
    for method in METHODS:
        assert re.search(rf"^\| {method} \|", md, re.M), method
    tradeoff = md.split("## Trade-off")[1].split("## ")[0]
    header = tradeoff.splitlines()[2]
    assert "U-LiRA AUC" in header and "TA retained %" in header and "challenge" in header
    assert "| ray | 2 | 5.50 | 1.82 | 0.91 | 4.00 | yes |" in md
    assert "| sequential | 1 | 10.00 | 1.00 | — | — | — |" in md
    assert "| retrain_seed | exact | 0.100 | 1.0× | 99.5 | 0.50 | — |" in md


def test_plot_is_a_png_with_content(result):
    png = plot_tradeoff(result)
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    # the same rows without the privacy column still draw (empty panels), never raise
    for row in result["rows"]:
        row.pop("ulira_auc", None)
    assert plot_tradeoff(result).startswith(b"\x89PNG")


def test_a_committed_benchmark_renders_generically(tmp_path):
    sisa = load_result(ROOT / "benchmarks" / "results" / "sisa.json")
    md = render_markdown(sisa)
    assert "unbake bench sisa" in md and "| part |" in md
    assert md.count("\n| accuracy |") == sum(r["part"] == "accuracy" for r in sisa["rows"])
    with pytest.raises(InvalidParameterError, match="no plot"):
        write_report(sisa, plot_path=tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
    page = render_html(sisa)
    assert "data:image/png" not in page and "<table>" in page


def test_approximate_result_renders_a_table_per_scenario_mean_and_std():
    def row(scenario, method, gap, seeds=3):
        cols = ("fa", "ra", "ta", "mia", "mia_efficacy", "avg_gap", "seconds", "time_fraction")
        r = {"scenario": scenario, "method": method, "seeds": seeds}
        for c in cols:
            r[c], r[f"{c}_std"] = (gap, 0.25) if c == "avg_gap" else (50.0, 1.0)
        return r

    rows = [row(s, m, g) for s in ("random", "class") for m, g in
            [("scrub", 3.0), ("original", 9.0), ("finetune", 1.5), ("retrain", 0.0),
             ("retrain_seed", 0.5)]]  # fmt: skip
    rows[0]["avg_gap"] = None  # a method with no finite gap sorts last and shows a dash
    result = {
        "benchmark": "approximate",
        "dataset": "fashion-mnist",
        "config": {
            "scenarios": {"random": {"forget_fraction": 0.1}, "class": {"forget_class": 0}},
            "seeds": [0, 1, 2],
        },
        "rows": rows,
        "summary": {"attack_strength": {"random": {"mean": 50.4, "std": 0.3}}},
    }
    md = render_markdown(result)
    assert "## Approximate unlearning, forgetting a random 10%" in md
    assert "## Approximate unlearning, forgetting class 0" in md
    random_part = md.split("forgetting class 0")[0]
    order = [m for m in re.findall(r"\n\| (\w+) \|", random_part) if m != "method"]
    assert order == ["retrain", "retrain_seed", "original", "finetune", "scrub"]
    assert "| 1.50 ± 0.25 |" in random_part and "50.4 ± 0.3" in random_part
    assert re.search(r"\| scrub \| [^\n]* \| — \|", random_part)


def test_cli_report_writes_html_markdown_and_plot(result, tmp_path):
    src = tmp_path / "tradeoff.json"
    src.write_text(json.dumps(result))
    out = CliRunner().invoke(
        app,
        [
            "report",
            str(src),
            "--html",
            str(tmp_path / "r.html"),
            "--markdown",
            str(tmp_path / "r.md"),
            "--plot",
            str(tmp_path / "r.png"),
        ],
    )
    assert out.exit_code == 0, out.output
    assert _png_in((tmp_path / "r.html").read_text()) == (tmp_path / "r.png").read_bytes()
    assert (tmp_path / "r.md").read_text() == render_markdown(result)
    plain = CliRunner().invoke(app, ["report", str(src)])
    assert plain.exit_code == 0 and plain.stdout == render_markdown(result)
    as_json = CliRunner().invoke(app, ["report", str(src), "--json"])
    assert json.loads(as_json.stdout) == {"written": [], "markdown": render_markdown(result)}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "Cannot read the benchmark result"),
        ("{not json", "is not JSON"),
        ('{"benchmark": "x"}', "is not a benchmark result (no rows, summary)"),
        ('{"benchmark": "x", "rows": 3, "summary": {}}', "no list of rows"),
        ("[1, 2]", "is not a benchmark result"),
    ],
)
def test_cli_report_bad_input_is_one_line_exit_2(tmp_path, content, message):
    src = tmp_path / "in.json"
    if content is not None:
        src.write_text(content)
    out = CliRunner().invoke(app, ["report", str(src), "--html", str(tmp_path / "o.html")])
    assert out.exit_code == 2
    err = out.stderr.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "o.html").exists()


def test_docs_results_pages_are_what_unbake_report_renders():
    from unbake.report.docs import results_pages

    results = ROOT / "benchmarks" / "results"
    pages = results_pages(results)
    approximate = load_result(results / "approximate.json")
    blocks = re.findall(r"(?:^\|.*\|\n)+", render_markdown(approximate), flags=re.M)
    assert len(blocks) == len(approximate["config"]["scenarios"]) >= 1
    for block in blocks:  # each table as `unbake report` renders it, row for row
        assert block in pages["results/approximate.md"]
    for path in results.glob("*.json"):  # and every other committed result, table for table
        rendered = re.findall(r"(?:^\|.*\|\n)+", render_markdown(load_result(path)), flags=re.M)
        assert rendered and all(b in pages[f"results/{path.stem}.md"] for b in rendered)
