"""stitch.report from a results database written by hand (no training): cells, bold, †, captions,
provenance, LaTeX that compiles, plots."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as st

from stitch.config import load_experiment
from stitch.report import ReportError, ablation_table, comparison_table, load_results, write_report
from stitch.runs import run_id_of
from stitch.stats import holm
from stitch.store import ResultStore, RunRow

EXPERIMENT = """\
name: {name}
task: segmentation
baseline:
  model: unet
  args: {{in_channels: 3, num_classes: 2, base_width: 4}}
probe: {{image_size: [32, 32]}}
train: {{epochs: {epochs}}}
insertions:
  - {{name: SE, module: SE, at: "enc*"}}
  - {{name: ECA, module: ECA, at: "enc*"}}
ablation: one-at-a-time
seeds: {seeds}
metrics: {{primary: miou, report: [miou, mdice]}}
report:
  caption: Attention in a tiny U-Net.
  label: tab:tiny
  formats: [latex, markdown, csv, html]
  test: {test}
"""

BASE = [0.70, 0.72, 0.71, 0.69]
# per-variant offsets from the baseline, seed by seed
OFFSETS = {
    "Baseline": [0.0, 0.0, 0.0, 0.0],
    "+SE": [0.050, 0.060, 0.055, 0.052],  # clearly better
    "+ECA": [0.010, -0.010, 0.000, 0.005],  # no evidence
    "+SE +ECA": [0.060, 0.062, 0.058, 0.061],  # best, clearly better
}
INSERTIONS = {"Baseline": [], "+SE": ["SE"], "+ECA": ["ECA"], "+SE +ECA": ["SE", "ECA"]}
PARAMS = {"Baseline": 1_000_000, "+SE": 1_006_336, "+ECA": 1_000_020, "+SE +ECA": 1_006_356}


def miou(variant: str, seed: int) -> float:
    return BASE[seed] + OFFSETS[variant][seed]


def mdice(variant: str, seed: int) -> float:
    # equal for +SE and +SE +ECA at two decimals in % (a tie), lower elsewhere
    return {"Baseline": 0.80, "+SE": 0.85001, "+ECA": 0.81, "+SE +ECA": 0.84999}[variant] + 0.001 * seed


def make_run_dir(
    tmp_path: Path,
    name: str = "tiny",
    seeds=(0, 1, 2, 3),
    epochs: int = 3,
    test: str = "ttest",
    skip: dict[str, set[int]] | None = None,
    extra_rows=(),
) -> tuple[Path, dict[tuple[str, int], str]]:
    """A run directory as `stitch run` leaves it, with rows written directly through ResultStore."""
    run_dir = tmp_path / "runs" / name
    run_dir.mkdir(parents=True)
    (run_dir / "experiment.yaml").write_text(
        EXPERIMENT.format(name=name, epochs=epochs, seeds=list(seeds), test=test)
    )
    exp = load_experiment(run_dir / "experiment.yaml")
    dump = exp.cfg.model_dump(mode="json")
    ids = {}
    with ResultStore(run_dir / "runs.sqlite") as store:
        for i, variant in enumerate(OFFSETS):
            for seed in seeds:
                if seed in (skip or {}).get(variant, set()):
                    continue
                config = {
                    "task": "segmentation",
                    "baseline": dump["baseline"],
                    "data": None,
                    "train": dict(dump["train"], epochs=epochs),
                    "insertions": [x for x in dump["insertions"] if x["name"] in INSERTIONS[variant]],
                    "seed": seed,
                    "primary_metric": "miou",
                }
                rid = run_id_of(config)
                ids[(variant, seed)] = rid
                store.start(
                    RunRow(
                        run_id=rid,
                        experiment=name,
                        variant=variant,
                        variant_slug=variant.lower(),
                        insertions=INSERTIONS[variant],
                        seed=seed,
                        status="running",
                        config=config,
                        primary_metric="miou",
                        params=PARAMS[variant],
                        baseline_params=PARAMS["Baseline"],
                        epochs=epochs,
                        started_at=1000.0 + 10 * i + seed,
                    )
                )
                history = [
                    {
                        "epoch": e,
                        "train_loss": 1.0 / e + 0.01 * seed,
                        "val_loss": 1.2 / e,
                        "miou": miou(variant, seed) * e / epochs,
                    }
                    for e in range(1, epochs + 1)
                ]
                best = {
                    "miou": miou(variant, seed),
                    "mdice": mdice(variant, seed),
                    "iou_per_class": [0.9, 0.5],
                }
                store.update(
                    rid,
                    status="done",
                    best_metrics=best,
                    final_metrics=best,
                    history=history,
                    best_epoch=epochs,
                    epochs_done=epochs,
                    wall_time=60.0 * (i + 1),
                )
        for row in extra_rows:
            store.start(row)
            if row.status != "running":
                store.update(row.run_id, status=row.status)
    return run_dir, ids


def md_cells(path: Path) -> dict[str, dict[str, str]]:
    """``{first cell: {header: cell}}`` from a pipe Markdown table."""
    lines = [line for line in path.read_text().splitlines() if line.startswith("|")]
    split = lambda line: [c.strip() for c in line.strip("|").split("|")]
    header = split(lines[0])
    return {cells[0]: dict(zip(header, cells)) for cells in map(split, lines[2:])}


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, Path, dict]:
    tmp = tmp_path_factory.mktemp("report")
    run_dir, ids = make_run_dir(tmp)
    _with_report_keys(run_dir, layout="landscape")  # every column (the layouts: test_report_layout.py)
    out = tmp / "out"
    write_report([run_dir], out, latency_repeats=2, latency_warmup=1)
    return run_dir, out, ids


def expected(variant: str, metric=miou, seeds=(0, 1, 2, 3)) -> str:
    v = [metric(variant, s) * 100 for s in seeds]
    return f"{np.mean(v):.2f} \u00b1 {np.std(v, ddof=1):.2f}"


def test_ablation_markdown_cell_by_cell(report) -> None:
    run_dir, out, _ = report
    cells = md_cells(out / "ablation.md")
    assert list(cells) == ["Baseline", "+SE", "+ECA", "+SE +ECA"]  # plan order
    header = [
        "Variant",
        "SE",
        "ECA",
        "mIoU (%)",
        "mDice (%)",
        "\u0394mIoU (pp) [95 % CI]",
        "Params (M)",
        "\u0394Params (K)",
        "FLOPs (M)",  # units chosen per column (stitch.report.units): this U-Net is small
        "\u0394FLOPs (K)",
    ]
    # (FLOPs counting every operation, where stitch.flops gives them, follow the FLOPs columns)
    assert [h for h in cells["Baseline"] if "all ops" not in h] == header
    checks = {v: (cells[v]["SE"], cells[v]["ECA"]) for v in cells}
    assert checks == {
        "Baseline": ("", ""),
        "+SE": ("\u2713", ""),
        "+ECA": ("", "\u2713"),
        "+SE +ECA": ("\u2713", "\u2713"),
    }
    assert cells["Baseline"]["mIoU (%)"] == expected("Baseline")
    assert cells["+ECA"]["mIoU (%)"] == expected("+ECA")
    assert cells["+SE"]["mIoU (%)"] == expected("+SE") + "\u2020"
    assert cells["+SE +ECA"]["mIoU (%)"] == f"**{expected('+SE +ECA')}**\u2020"
    # params come from the database (runs.params), deltas in thousands
    assert [cells[v]["Params (M)"] for v in cells] == ["1.00", "1.01", "1.00", "1.01"]
    assert [cells[v]["\u0394Params (K)"] for v in cells] == ["\u2013", "+6.34", "+0.02", "+6.36"]
    # FLOPs are measured (costs.json) at the probe size, 1x3x32x32
    costs = json.loads((run_dir / "costs.json").read_text())["entries"]
    flops = {e["variant"]: e["flops"] for e in costs.values()}
    for v in cells:
        assert cells[v]["FLOPs (M)"] == f"{flops[v] / 1e6:.2f}"
    assert cells["+SE"]["\u0394FLOPs (K)"] == f"+{(flops['+SE'] - flops['Baseline']) / 1e3:.2f}"


def test_significance_marks_follow_holm(report) -> None:
    run_dir, out, _ = report
    res = load_results(run_dir, costs=False)
    raw = {}
    for v in ("+SE", "+ECA", "+SE +ECA"):
        raw[v] = st.ttest_rel(
            [miou(v, s) for s in range(4)], [miou("Baseline", s) for s in range(4)], alternative="greater"
        ).pvalue
    adjusted = dict(zip(raw, holm(list(raw.values()))))
    for v in raw:
        t = res.tests["miou"][v]
        assert t.p == pytest.approx(raw[v]) and t.p_holm == pytest.approx(adjusted[v])
    assert {v for v in raw if adjusted[v] < 0.05} == {"+SE", "+SE +ECA"}
    table = ablation_table(res)
    assert [table.cell(v, "metric:miou").dagger for v in ("Baseline", "+SE", "+ECA", "+SE +ECA")] == [
        False,
        True,
        False,
        True,
    ]
    assert (
        "\u2020: significantly better than Baseline at \u03b1 = 0.05 (one-sided paired t-test over seeds, Holm-corrected over the 3 variants"
        in table.caption
    )
    assert "4 seeds (0, 1, 2, 3)" in table.caption
    assert table.caption.startswith("Attention in a tiny U-Net.") and table.label == "tab:tiny"
    # the comparison table shows the adjusted p of the primary metric and the paired difference
    comp = md_cells(out / "comparison.md")
    assert comp["+ECA"]["p (Holm)"] == f"{adjusted['+ECA']:.3f}"
    assert comp["+SE"]["p (Holm)"] == ("<0.001" if adjusted["+SE"] < 0.001 else f"{adjusted['+SE']:.3f}")
    assert comp["Baseline"]["p (Holm)"] == "\u2013"
    diffs = [(miou("+SE", s) - miou("Baseline", s)) * 100 for s in range(4)]
    low, high = st.t.interval(0.95, 3, loc=np.mean(diffs), scale=st.sem(diffs))
    assert comp["+SE"]["\u0394mIoU (pp) [95 % CI]"] == f"+{np.mean(diffs):.2f} [+{low:.2f}, +{high:.2f}]"
    assert comp["Baseline"]["\u0394mIoU (pp) [95 % CI]"] == "\u2013"
    assert comp["+SE +ECA"]["Seeds"] == "4"


def test_bold_marks_the_best_mean_and_ties_at_shown_precision(report) -> None:
    _, out, _ = report
    cells = md_cells(out / "ablation.md")
    bold_miou = [v for v in cells if cells[v]["mIoU (%)"].startswith("**")]
    assert bold_miou == ["+SE +ECA"]
    # mDice: +SE and +SE +ECA are 85.00 at two decimals (85.001 vs 84.999 unrounded): both bold
    bold_dice = [v for v in cells if cells[v]["mDice (%)"].startswith("**")]
    assert bold_dice == ["+SE", "+SE +ECA"]
    assert not any(cells[v]["Params (M)"].startswith("**") for v in cells)


def test_latex_cells_and_layout(report) -> None:
    _, out, _ = report
    tex = (out / "ablation.tex").read_text()
    assert tex.startswith("% needs \\usepackage{booktabs,amssymb,siunitx,graphicx}")
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    assert "\\caption{Attention in a tiny U-Net." in tex and "\\label{tab:tiny}" in tex
    n_columns = len(md_cells(out / "ablation.md")["Baseline"])
    assert "\\begin{tabular}{l" + "c" * (n_columns - 1) + "}" in tex
    se = next(line for line in tex.splitlines() if line.startswith("+SE &"))
    cells = [c.strip() for c in se.removesuffix("\\\\").split(" & ")]
    mean, std = expected("+SE").split(" \u00b1 ")
    assert cells[:3] == ["+SE", "\\checkmark", ""]
    assert cells[3] == f"\\(\\num{{{mean}}} \\pm \\num{{{std}}}\\)\\(^{{\\dagger}}\\)"
    assert cells[5].startswith("\\(\\num[retain-explicit-plus]{+5.43}\\ [\\num[retain-explicit-plus]{+4.")
    assert cells[7] == "\\(\\num[retain-explicit-plus]{+6.34}\\)"
    both = next(line for line in tex.splitlines() if line.startswith("+SE +ECA &"))
    assert "{\\boldmath\\(\\num{" in both
    assert "% \\" not in tex.split("\n", 1)[1]  # no stray comment characters in the body: % is escaped
    assert "in \\%." in tex


def test_other_outputs_csv_html_plots(report) -> None:
    _, out, _ = report
    import pandas as pd

    df = pd.read_csv(out / "ablation.csv")
    row = df[df.variant == "+SE"].iloc[0]
    assert row.miou_mean == pytest.approx(np.mean([miou("+SE", s) for s in range(4)]))
    assert row.miou_std == pytest.approx(np.std([miou("+SE", s) for s in range(4)], ddof=1))
    assert row.miou_n == 4 and row.miou_significant == 1 and row.uses_SE == 1 and row.uses_ECA == 0
    assert row.params == 1_006_336
    html = (out / "ablation.html").read_text()
    assert "<caption>Attention in a tiny U-Net." in html and "font-weight: bold" in html
    for stem in ("metrics", "curves"):
        for ext in ("png", "pdf"):
            p = out / f"{stem}.{ext}"
            assert p.is_file() and p.stat().st_size > 1000
    assert (out / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "curves.pdf").read_bytes()[:5] == b"%PDF-"


def test_provenance_maps_every_cell_to_its_runs(report) -> None:
    _, out, ids = report
    prov = json.loads((out / "provenance.json").read_text())
    abl = prov["tables"]["ablation"]["cells"]
    assert set(abl) == {"Baseline", "+SE", "+ECA", "+SE +ECA"}
    for v in abl:
        mine = [ids[(v, s)] for s in range(4)]
        if v == "Baseline":
            assert (
                abl[v]["mIoU (%)"]["run_ids"] == mine and abl[v]["mIoU (%)"]["source"] == "best_metrics.miou"
            )
        else:  # the † of a variant comes from a paired test that also reads the baseline's runs
            assert abl[v]["mIoU (%)"]["run_ids"] == mine + [ids[("Baseline", s)] for s in range(4)]
            assert abl[v]["mIoU (%)"]["source"].startswith("best_metrics.miou; the paired test also reads")
        assert abl[v]["mIoU (%)"]["seeds"] == [0, 1, 2, 3]
        assert abl[v]["SE"]["run_ids"] == mine and abl[v]["Params (M)"]["run_ids"] == mine
        assert abl[v]["FLOPs (M)"]["source"].startswith("costs.json:")
        assert set(abl[v]) == set(prov["tables"]["ablation"]["columns"])
    # a delta cell aggregates the variant's runs and the baseline's
    assert set(abl["+SE"]["\u0394Params (K)"]["run_ids"]) == {
        ids[(v, s)] for v in ("+SE", "Baseline") for s in range(4)
    }
    comp = prov["tables"]["comparison"]["cells"]
    assert set(comp["+ECA"]["p (Holm)"]["run_ids"]) == {
        ids[(v, s)] for v in ("+ECA", "Baseline") for s in range(4)
    }
    assert prov["tests"]["tiny"]["miou"]["+SE"]["significant"] is True


def test_fewer_than_three_seeds_claims_no_significance(tmp_path: Path) -> None:
    run_dir, _ = make_run_dir(tmp_path, seeds=(0, 1))
    out = tmp_path / "out"
    write_report([run_dir], out, costs=False)
    cells = md_cells(out / "ablation.md")
    assert not any("\u2020" in c for row in cells.values() for c in row.values())
    caption = (out / "ablation.md").read_text()  # the method text is under the table
    assert (
        "With fewer than 3 paired seeds (2 here) no significance test is run, and no significance is claimed."
        in caption
    )
    assert "over 2 seeds (0, 1)" in caption
    assert cells["+SE"]["mIoU (%)"] == expected("+SE", seeds=(0, 1))
    assert (
        "Params (M)" in cells["+SE"] and "FLOPs (G)" not in cells["+SE"]
    )  # costs=False: params from the database only
    tex = (out / "ablation.tex").read_text()
    assert (
        "no significance is claimed" in tex
        and "\\dagger}\\)" not in tex.split("\\begin{tabular}", 1)[1].split("\\end{tabular}")[0]
    )  # no † in the table (the method text under it says what † would mean)


def test_only_done_runs_count_and_differing_seed_counts_are_stated(tmp_path: Path) -> None:
    failed = RunRow(
        run_id="f" * 16,
        experiment="tiny",
        variant="+SE",
        variant_slug="se",
        insertions=["SE"],
        seed=9,
        status="failed",
        config={"seed": 9, "insertions": []},
        primary_metric="miou",
    )
    running = RunRow(
        run_id="r" * 16,
        experiment="tiny",
        variant="+ECA",
        variant_slug="eca",
        insertions=["ECA"],
        seed=8,
        status="running",
        config={"seed": 8, "insertions": []},
        primary_metric="miou",
    )
    run_dir, ids = make_run_dir(tmp_path, skip={"+ECA": {3}}, extra_rows=[failed, running])
    res = load_results(run_dir, costs=False)
    assert res.by_name("+ECA").seeds == [0, 1, 2] and res.by_name("+SE").seeds == [0, 1, 2, 3]
    assert res.tests["miou"]["+ECA"].seeds == [0, 1, 2]
    table = ablation_table(res)
    assert "different numbers of seeds: Baseline 4, +SE 4, +ECA 3, +SE +ECA 4" in table.caption
    assert any("1 failed, 1 running" in n for n in table.notes)
    assert table.cell("+ECA", "metric:miou").run_ids == [ids[("+ECA", s)] for s in range(3)] + [
        ids[("Baseline", s)] for s in range(3)
    ]
    assert table.cell("+ECA", "metric:miou").text == expected("+ECA", seeds=(0, 1, 2))


def test_runs_of_another_recipe_or_stale_insertions_are_left_out(tmp_path: Path) -> None:
    run_dir, ids = make_run_dir(tmp_path)
    # an earlier short run (--epochs 1) of the baseline, seed 0: another recipe, fewer runs
    with ResultStore(run_dir / "runs.sqlite") as store:
        row = store.get(ids[("Baseline", 0)])
        short = dict(row.config, train=dict(row.config["train"], epochs=1))
        store.start(
            RunRow(
                **{
                    **row.__dict__,
                    "run_id": run_id_of(short),
                    "config": short,
                    "epochs": 1,
                    "status": "running",
                }
            )
        )
        store.update(run_id_of(short), status="done", best_metrics={"miou": 0.1, "mdice": 0.1})
    # the SE settings changed in experiment.yaml since: every run with SE is stale
    text = (
        (run_dir / "experiment.yaml")
        .read_text()
        .replace(
            '{name: SE, module: SE, at: "enc*"}', '{name: SE, module: SE, at: "enc*", args: {rd_ratio: 0.5}}'
        )
    )
    (run_dir / "experiment.yaml").write_text(text)
    res = load_results(run_dir, costs=False)
    assert [v.name for v in res.variants] == ["Baseline", "+ECA"]
    assert res.by_name("Baseline").run_ids == [ids[("Baseline", s)] for s in range(4)]
    notes = " ".join(res.notes)
    assert (
        "another training recipe (differing in train.epochs)" in notes
        and "insertion settings differ" in notes
    )
    assert "No finished runs (not in the tables): +SE, +SE +ECA." in notes


def test_several_run_dirs_one_row_per_experiment(tmp_path: Path) -> None:
    a, ids_a = make_run_dir(tmp_path, name="exp_a")
    b, ids_b = make_run_dir(tmp_path, name="exp_b", seeds=(0, 1))
    out = tmp_path / "out"
    files = write_report([a, b], out, costs=False)
    names = {p.name for p in files}
    assert {
        "ablation_exp_a.md",
        "ablation_exp_b.tex",
        "metrics_exp_a.png",
        "curves_exp_b.pdf",
        "comparison.md",
        "provenance.json",
    } <= names
    # the baselines' run ids overlap (same recipe; the name is not hashed) but exp_b has seeds 0, 1 only: two rows
    rows = [(r["Experiment"], r["Variant"]) for r in _md_rows(out / "comparison.md")]
    assert rows == [
        ("exp_a", "Baseline"),
        ("exp_a", "+SE +ECA"),
        ("exp_b", "Baseline"),
        ("exp_b", "+SE +ECA"),
    ]
    prov = json.loads((out / "provenance.json").read_text())["tables"]["comparison"]["cells"]
    assert prov["exp_a: +SE +ECA"]["mIoU (%)"]["run_ids"] == [ids_a[("+SE +ECA", s)] for s in range(4)]
    assert prov["exp_b: +SE +ECA"]["mIoU (%)"]["run_ids"] == [ids_b[("+SE +ECA", s)] for s in range(2)]
    md = _md_rows(out / "comparison.md")
    assert md[1]["mIoU (%)"] == f"{expected('+SE +ECA')}\u2020"  # significant in exp_a (4 seeds)
    # best mean (seeds 0, 1) but no test with 2 seeds: not bold (report.bold: significant)
    assert md[3]["mIoU (%)"] == expected("+SE +ECA", seeds=(0, 1))
    assert "No significance is claimed for exp_b" in (out / "comparison.md").read_text()


def test_identical_baselines_are_shown_once(tmp_path: Path) -> None:
    a, _ = make_run_dir(tmp_path, name="exp_a")
    b = tmp_path / "runs" / "exp_b"
    shutil.copytree(a, b)  # the same baseline runs (same run ids) under another experiment name
    (b / "experiment.yaml").write_text(
        (b / "experiment.yaml").read_text().replace("name: exp_a", "name: exp_b")
    )
    table = comparison_table([load_results(d, costs=False) for d in (a, b)])
    assert [(r.experiment, r.variant) for r in table.rows] == [
        ("exp_a, exp_b", "Baseline"),
        ("exp_a", "+SE +ECA"),
        ("exp_b", "+SE +ECA"),
    ]


def test_wilcoxon_with_few_seeds_says_no_mark_is_possible(tmp_path: Path) -> None:
    run_dir, _ = make_run_dir(tmp_path, test="wilcoxon")
    table = ablation_table(load_results(run_dir, costs=False))
    assert "Wilcoxon signed-rank" in table.caption and "cannot give p below 0.0625" in table.caption
    assert not any(r.cells["metric:miou"].dagger for r in table.rows)


def test_missing_or_empty_run_dir_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="no experiment.yaml"):
        write_report([tmp_path], tmp_path / "out")
    run_dir, _ = make_run_dir(tmp_path, seeds=(0,), skip={v: {0} for v in OFFSETS})
    with pytest.raises(ReportError, match="no finished runs"):
        write_report([run_dir], tmp_path / "out")


def test_standalone_latex_compiles_with_pdflatex(report, tmp_path: Path) -> None:
    if shutil.which("pdflatex") is None:
        pytest.skip(
            "pdflatex is not on PATH (Debian: apt-get install texlive-latex-base texlive-latex-recommended)"
        )
    run_dir, _, _ = report
    out = tmp_path / "tex"
    write_report(
        [run_dir], out, standalone=True, latency_repeats=2, latency_warmup=1
    )  # costs come from the cache
    for name in ("ablation", "comparison"):
        tex = (out / f"{name}.tex").read_text()
        assert (
            tex.startswith("\\documentclass{article}")
            and "\\usepackage{booktabs}" in tex
            and tex.rstrip().endswith("\\end{document}")
        )
        proc = subprocess.run(
            ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", f"{name}.tex"],
            cwd=out,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stdout[-2000:]
        assert (out / f"{name}.pdf").stat().st_size > 1000
    # where siunitx is not installed (Debian's texlive-latex-recommended alone) the document falls back to plain numbers
    fallback = (
        (out / "ablation.tex")
        .read_text()
        .replace("\\IfFileExists{siunitx.sty}", "\\IfFileExists{no-such-package.sty}")
    )
    (out / "fallback.tex").write_text(fallback)
    proc = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "fallback.tex"],
        cwd=out,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-2000:]


def _md_rows(path: Path) -> list[dict[str, str]]:
    lines = [line for line in path.read_text().splitlines() if line.startswith("|")]
    split = lambda line: [c.strip() for c in line.strip("|").split("|")]
    header = split(lines[0])
    return [dict(zip(header, split(line))) for line in lines[2:]]


def test_baselines_of_two_experiments_merge_when_only_keep_last_differs() -> None:
    from stitch.plan import Variant
    from stitch.report import VariantRuns

    def runs(keep_last: int, lr: float = 1e-3) -> VariantRuns:
        rows = [
            RunRow(
                run_id=f"r{s}{keep_last}{lr}",
                experiment="e",
                variant="Baseline",
                variant_slug="baseline",
                insertions=[],
                seed=s,
                status="done",
                config={
                    "seed": s,
                    "train": {"epochs": 3, "keep_last": keep_last, "lr": lr},
                    "insertions": [],
                },
                primary_metric="miou",
            )
            for s in range(3)
        ]
        return VariantRuns(Variant("Baseline", ()), rows)

    assert runs(2).recipe_key() == runs(5).recipe_key()
    assert runs(2).recipe_key() != runs(2, lr=1e-2).recipe_key()


def _with_report_keys(run_dir: Path, **keys: object) -> None:
    """Add keys under ``report:`` in a run directory's experiment.yaml."""
    text = (run_dir / "experiment.yaml").read_text()
    extra = "".join(f"  {k}: {v}\n" for k, v in keys.items())
    (run_dir / "experiment.yaml").write_text(text.replace("  test: ttest\n", "  test: ttest\n" + extra))


def test_bold_is_absent_when_nothing_is_significant(tmp_path: Path) -> None:
    run_dir, _ = make_run_dir(tmp_path, seeds=(0, 1))  # two seeds: no test, nothing significant
    out = tmp_path / "out"
    write_report([run_dir], out, costs=False)
    for name in ("ablation", "comparison"):
        text = (out / f"{name}.md").read_text()
        assert "**" not in text and "\\boldmath" not in (out / f"{name}.tex").read_text()
        assert "Nothing is bold in any column: no best mean is significantly better than Baseline." in text
    # report.bold: best restores the plain rule, none bolds nothing even where it is significant
    _with_report_keys(run_dir, bold="best")
    table = ablation_table(load_results(run_dir, costs=False))
    assert [r.key for r in table.rows if r.cells["metric:miou"].bold] == ["+SE +ECA"]
    assert "Bold: best mean per metric column." in table.caption
    full, _ = make_run_dir(tmp_path / "full")
    _with_report_keys(full, bold="none")
    table = ablation_table(load_results(full, costs=False))
    assert not any(c.bold for r in table.rows for c in r.cells.values()) and "Bold" not in table.caption


def test_bold_needs_significance_in_its_own_column(tmp_path: Path) -> None:
    # +ECA's mIoU made the best but not significant (one seed far off): that column has no bold
    run_dir, _ = make_run_dir(tmp_path)
    with ResultStore(run_dir / "runs.sqlite") as store:
        for row in store.rows():
            if row.variant == "+ECA":
                best = dict(row.best_metrics or {}, miou=0.99 if row.seed == 0 else row.best_metrics["miou"])
                store.update(row.run_id, best_metrics=best)
    table = ablation_table(load_results(run_dir, costs=False))
    assert not any(r.cells["metric:miou"].bold for r in table.rows)
    assert [r.key for r in table.rows if r.cells["metric:mdice"].bold] == ["+SE", "+SE +ECA"]
    assert "Nothing is bold in mIoU: no best mean is significantly better than Baseline." in table.caption


def test_effect_sizes_in_csv_provenance_and_the_noise_floor(report) -> None:
    import pandas as pd

    from stitch.stats import bootstrap_interval
    from stitch.stats_power import min_detectable_effect, pooled_sd

    run_dir, out, _ = report
    df = pd.read_csv(out / "ablation.csv")
    row = df[df.variant == "+ECA"].iloc[0]
    diffs = [miou("+ECA", s) - miou("Baseline", s) for s in range(4)]
    low, high = st.t.interval(0.95, 3, loc=np.mean(diffs), scale=st.sem(diffs))
    assert [row[f"miou_seed{s}"] for s in range(4)] == pytest.approx([miou("+ECA", s) for s in range(4)])
    assert row.miou_diff == pytest.approx(np.mean(diffs))
    assert (row.miou_diff_ci_low, row.miou_diff_ci_high) == pytest.approx((low, high))
    boot = (row.miou_diff_boot_low, row.miou_diff_boot_high)
    assert boot == pytest.approx(bootstrap_interval(diffs))
    comp = pd.read_csv(out / "comparison.csv")
    assert comp[comp.variant == "+ECA"].iloc[0].miou_diff_ci_low == pytest.approx(low)
    prov = json.loads((out / "provenance.json").read_text())
    t = prov["tests"]["tiny"]["miou"]["+ECA"]
    assert (
        t["diffs"] == pytest.approx(diffs) and t["ci"] == pytest.approx([low, high]) and t["ci_level"] == 0.95
    )
    assert prov["values"]["tiny"]["miou"]["+SE"]["2"] == pytest.approx(miou("+SE", 2))
    # the noise floor: pooled std of the three variants' paired differences, 4 seeds, one-sided
    sd = pooled_sd(
        [[miou(v, s) - miou("Baseline", s) for s in range(4)] for v in ("+SE", "+ECA", "+SE +ECA")]
    )
    mde = min_detectable_effect(sd, 4, 0.05)
    nf = prov["noise_floor"]["tiny"]
    assert nf["sd"] == pytest.approx(sd) and nf["mde"] == pytest.approx(mde) and nf["n"] == 4
    assert nf["sd_source"] == "paired differences" and nf["min_effect"] is None
    caption = (out / "ablation.md").read_text()  # the method text is under the table
    assert (
        f"Noise floor: with 4 seeds and the standard deviation of the paired differences over seeds "
        f"({sd * 100:.2f} pp), the design detects a \u0394mIoU of at least {mde * 100:.2f} pp at \u03b1 = 0.05 "
        "and 80 % power (one-sided paired t-test)." in caption
    )
    assert "two-sided 95 % t-interval" in caption


def test_min_effect_names_the_seeds_it_needs(tmp_path: Path) -> None:
    from stitch.stats_power import seeds_needed

    run_dir, _ = make_run_dir(tmp_path, seeds=(0, 1))
    _with_report_keys(run_dir, min_effect=0.01, alpha=0.1, layout="landscape")
    res = load_results(run_dir, costs=False)
    table = ablation_table(res)
    sd = np.sqrt(
        np.mean(
            [
                np.var([miou(v, s) - miou("Baseline", s) for s in (0, 1)], ddof=1)
                for v in ("+SE", "+ECA", "+SE +ECA")
            ]
        )
    )
    need = seeds_needed(0.01, sd, 0.1)
    assert need is not None and need > 2
    # two seeds: no test, so no noise floor of this design, but the seeds a 1 pp difference needs
    assert "Noise floor" not in table.caption
    assert f"A \u0394mIoU of 1.00 pp needs {need} seeds at \u03b1 = 0.1 and 80 % power" in table.caption
    assert "[90 % CI]" in table.columns[5].header and table.cell("+SE", "diff").text.count(",") == 1


def test_noise_floor_from_the_baseline_alone_and_its_latex(tmp_path: Path) -> None:
    from stitch.stats_power import min_detectable_effect

    others = {v: {0, 1, 2, 3} for v in OFFSETS if v != "Baseline"}
    run_dir, _ = make_run_dir(tmp_path, skip=others)
    out = tmp_path / "out"
    write_report([run_dir], out, costs=False, standalone=True)
    sd = np.std([miou("Baseline", s) for s in range(4)], ddof=1) * np.sqrt(2)
    caption = (out / "ablation.md").read_text()  # the method text is under the table
    assert (
        f"with 4 seeds and \u221a2 \u00d7 the Baseline's standard deviation over seeds ({sd * 100:.2f} pp), "
        f"the design detects a \u0394mIoU of at least {min_detectable_effect(sd, 4, 0.05) * 100:.2f} pp"
        in caption
    )
    assert "\\(\\surd\\)2" in (out / "ablation.tex").read_text()
    if shutil.which("pdflatex") is not None:
        proc = subprocess.run(
            ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "ablation.tex"],
            cwd=out,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stdout[-2000:]


def test_no_noise_floor_from_results_that_do_not_vary(tmp_path: Path, monkeypatch) -> None:
    for variant in OFFSETS:
        monkeypatch.setitem(OFFSETS, variant, [0.0, 0.0, 0.0, 0.0])
    run_dir, _ = make_run_dir(tmp_path)
    _with_report_keys(run_dir, min_effect=0.01)
    caption = ablation_table(load_results(run_dir, costs=False)).caption
    assert "Noise floor: not estimated; the results do not vary over seeds." in caption
    assert "seeds at" not in caption and "detects" not in caption
