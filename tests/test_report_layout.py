"""Tables that fit a paper (issue 15): ``report.layout`` picks the float and the default columns,
``report.columns`` chooses and orders them, cost units scale per column, AP names get subscripts,
the caption is one sentence (the method text goes under the table), and every table, generated
here in each layout or committed under ``reports/``, compiles in a two-column article (and in
IEEEtran where installed) with no overfull box over 1 pt."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_report import _with_report_keys, make_run_dir, md_cells

from stitch.config import load_experiment
from stitch.errors import StitchError
from stitch.report import Table, ablation_table, comparison_table, load_results
from stitch.report.captions import design_phrase
from stitch.report.columns import cost_column, metric_column, metric_latex
from stitch.report.latex_fit import split_header
from stitch.report.render import write_table
from stitch.report.render_latex import LAYOUT_MARKER, stacked_header
from stitch.report.units import unit_for

REPO = Path(__file__).resolve().parents[1]
LAYOUTS = ("column", "page", "landscape")
#: a CVPR-like two-column page: 3.25 in (235 pt) columns, 6.875 in (497 pt) text width
ARTICLE = r"""\documentclass[10pt,twocolumn]{article}
\usepackage[letterpaper,textwidth=6.875in,textheight=8.875in,columnsep=0.375in]{geometry}
"""
IEEETRAN = "\\documentclass[conference]{IEEEtran}\n"
PACKAGES = r"""\usepackage{booktabs,amssymb,graphicx}
\IfFileExists{siunitx.sty}{\usepackage{siunitx}}{\providecommand{\num}[2][]{#2}\providecommand{\sisetup}[1]{}}
\begin{document}
"""


def write_tables(run_dir: Path, out: Path, standalone: bool = False) -> Table:
    """The ablation and comparison tables of ``run_dir`` as LaTeX and Markdown (no plots, no
    latency; costs from ``costs.json``); returns the ablation table."""
    res = load_results(run_dir, latency=False)
    table = ablation_table(res)
    write_table(table, out / "ablation", ["latex", "markdown"], standalone)
    write_table(comparison_table([res]), out / "comparison", ["latex", "markdown"], standalone)
    return table


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, Path]:
    """One run directory per layout (the same runs), with its tables in ``report/``."""
    tmp = tmp_path_factory.mktemp("layouts")
    out: dict[str, Path] = {}
    for layout in LAYOUTS:
        run_dir, _ = make_run_dir(tmp / layout)
        _with_report_keys(run_dir, layout=layout)
        if out:  # the same runs: the costs measured once
            shutil.copy(out["column"] / "costs.json", run_dir / "costs.json")
        write_tables(run_dir, run_dir / "report")
        out[layout] = run_dir
    return out


def test_layouts_pick_the_float_and_the_default_columns(layouts) -> None:
    floats = {}
    for layout, run_dir in layouts.items():
        tex = (run_dir / "report" / "ablation.tex").read_text()
        assert tex.splitlines()[1].startswith(f"{LAYOUT_MARKER}{layout} (")
        floats[layout] = re.search(r"\\begin\{(table\*?)\}\[t\]", tex).group(1)
    assert floats == {"column": "table", "page": "table*", "landscape": "table*"}
    res = load_results(layouts["column"], costs=False)
    keys = [c.key for c in ablation_table(res).columns]
    assert keys == ["variant", "check:SE", "check:ECA", "metric:miou", "delta", "params"]
    comp = [c.key for c in comparison_table([res]).columns]
    assert comp == ["variant", "seeds", "metric:miou", "delta", "params"]
    page = [c.key for c in ablation_table(load_results(layouts["page"], costs=False)).columns]
    assert page == [
        *["variant", "check:SE", "check:ECA", "metric:miou", "metric:mdice", "diff"],
        *["params", "params_delta"],
    ]


def test_report_columns_choose_and_order(tmp_path: Path) -> None:
    run_dir, _ = make_run_dir(tmp_path)
    _with_report_keys(run_dir, columns="[params, metrics, diff, time]")
    res = load_results(run_dir, costs=False)
    keys = [c.key for c in ablation_table(res).columns]  # no time column in the ablation table
    assert keys == ["variant", "check:SE", "check:ECA", "params", "metric:miou", "metric:mdice", "diff"]
    keys = [c.key for c in comparison_table([res]).columns]
    assert keys == ["variant", "params", "metric:miou", "metric:mdice", "diff", "time"]
    # the records (CSV) keep every field whatever is shown
    assert "mdice_mean" in ablation_table(res).records[0] and "params_delta" in ablation_table(res).records[1]


def test_an_unknown_column_is_a_one_line_error_with_a_suggestion(tmp_path: Path) -> None:
    run_dir, _ = make_run_dir(tmp_path)
    _with_report_keys(run_dir, columns="[metrics, flop]")
    with pytest.raises(StitchError) as err:
        load_experiment(run_dir / "experiment.yaml")
    msg = str(err.value)
    assert "\n" not in msg and "report.columns[1]" in msg and "did you mean 'flops'?" in msg


def test_units_are_chosen_per_column() -> None:
    # the PANet example: ΔParams +40 308.48 K and ΔFLOPs +57 802.75 M before
    assert unit_for([None, 3_540_480, 40_308_480], "K") == ("M", 1e6)
    assert unit_for([None, 792_720_000, 57_802_750_000], "M") == ("G", 1e9)
    assert unit_for([6_336, 20, -300], "K") == ("K", 1e3)
    assert unit_for([20], "M") == ("K", 1e3)  # below a thousand: thousands
    assert unit_for([None, 0], "M") == ("M", 1e6)  # nothing to choose by: the column's default
    assert cost_column("params_delta", {"params_delta": ("M", 1e6)}).header == "\u0394Params (M)"
    assert cost_column("flops", {"flops": ("G", 1e9)}).latex == "FLOPs (G)"


def test_ap_names_get_subscripts_in_latex_only() -> None:
    assert metric_latex("segm_ap50") == "Mask AP\\(_{50}\\)"
    assert metric_latex("bbox_aps") == "Box AP\\(_{S}\\)"
    assert metric_latex("segm_apl") == "Mask AP\\(_{L}\\)"
    assert metric_latex("segm_ap") == "Mask AP" and metric_latex("fg_iou") == "FG IoU"
    col = metric_column("bbox_ap75", 100.0)
    assert col.header == "Box AP75 (%)" and col.latex == "Box AP\\(_{75}\\) (\\%)"


def test_headers_go_on_two_lines_with_the_unit_or_interval_second() -> None:
    assert split_header("\u0394mIoU (pp) [95 % CI]") == ["\u0394mIoU (pp)", "[95 % CI]"]
    assert split_header("mIoU (%)") == ["mIoU", "(%)"] and split_header("Variant") == ["Variant"]
    # a second line starting with "[" is not the optional skip of \\[...] (pdflatex would loop)
    assert stacked_header("\\(\\Delta\\)mIoU (pp) [95 \\% CI]") == (
        "\\begin{tabular}[b]{@{}c@{}}\\(\\Delta\\)mIoU (pp)\\\\{}[95 \\% CI]\\end{tabular}"
    )
    assert stacked_header("Variant") == "Variant"


def test_the_split_and_its_size_are_in_the_caption() -> None:
    variants = [SimpleNamespace(seeds=[0, 1, 2])] * 2
    res = SimpleNamespace(
        split="test", split_images=4, variants=variants, scale={"miou": 100.0}, metrics=["miou"]
    )
    assert design_phrase(res) == "Held-out test split (4 images), mean \u00b1 std over 3 seeds, metrics in %"
    res.split, res.split_images = "val", None
    assert design_phrase(res).startswith("Validation split (no test split; it also chose the epoch)")


def test_a_short_caption_and_the_method_text_under_the_table(layouts) -> None:
    run_dir = layouts["column"]
    table = ablation_table(load_results(run_dir, latency=False))
    short = table.short_caption
    assert short == (
        "Attention in a tiny U-Net. Validation split (no test split; it also chose the epoch), mean \u00b1 "
        "std over 4 seeds, metrics in %; \u0394mIoU vs Baseline; \u2020: p < 0.05, one-sided paired t-test, "
        "Holm-corrected."
    )
    md = (run_dir / "report" / "ablation.md").read_text()
    assert md.splitlines()[0] == f"Table: {short}"
    # every sentence the caption stated before is under the table, but the title only once (above)
    title = "Attention in a tiny U-Net."
    assert table.caption.startswith(title) and table.details() == table.caption[len(title) :].lstrip()
    below = md.split("\n\n", 2)[2]
    assert table.details() in below and "Noise floor: with 4 seeds" in below and md.count(title) == 1
    tex = (run_dir / "report" / "ablation.tex").read_text()
    assert tex.count("Attention in a tiny U-Net") == 1
    # the columns this layout leaves out are named there (their numbers are in the CSV)
    assert "Not shown in this layout (report.columns; the CSV has them): mDice (%), " in table.caption
    assert "\\par\\smallskip\n{\\footnotesize\\raggedright Mean" in tex
    # the page layout shows the interval, and its caption says so
    page = md_cells(layouts["page"] / "report" / "ablation.md")
    assert "\u0394mIoU (pp) [95 % CI]" in page["+SE"]
    assert "with 95 % CI;" in (layouts["page"] / "report" / "ablation.md").read_text().splitlines()[0]


def _body(tex: str) -> str:
    """A table file's float: a standalone document's body, or the file as it is."""
    if "\\begin{document}" in tex:
        return tex.split("\\begin{document}", 1)[1].rsplit("\\end{document}", 1)[0]
    return tex


def _overfull(tables: dict[str, str], preamble: str, tmp: Path) -> dict[str, list[float]]:
    """``{name: [overfull widths in pt over 1 pt]}`` from compiling every table (``\\input``) in
    one document with ``preamble``."""
    lines = []
    for i, (name, tex) in enumerate(tables.items()):
        (tmp / f"t{i}.tex").write_text(_body(tex))
        lines.append(f"\\typeout{{stitch-table: {name}}}\\input{{t{i}.tex}}\\clearpage")
    (tmp / "doc.tex").write_text(preamble + PACKAGES + "\n".join(lines) + "\n\\end{document}\n")
    proc = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=120,
    )
    log = (tmp / "doc.log").read_text(errors="replace")
    assert proc.returncode == 0, log[-3000:]
    found: dict[str, list[float]] = {}
    current = ""
    for line in log.splitlines():
        if line.startswith("stitch-table: "):
            current = line.removeprefix("stitch-table: ")
        m = re.match(r"Overfull \\hbox \(([\d.]+)pt too wide\)", line)
        if m and float(m.group(1)) > 1.0:
            found.setdefault(current, []).append(float(m.group(1)))
    return found


def _tables(layouts: dict[str, Path]) -> dict[str, str]:
    """The generated tables of every layout, then the committed ones the current renderer wrote."""
    tables = {
        f"{layout}/{p.name}": p.read_text()
        for layout, run_dir in layouts.items()
        for p in sorted((run_dir / "report").glob("*.tex"))
    }
    for p in sorted(REPO.glob("reports/*/*.tex")):
        text = p.read_text()
        if any(line.startswith(LAYOUT_MARKER) for line in text.splitlines()[:2]):  # older ones: skipped
            tables[str(p.relative_to(REPO))] = text
    return tables


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not on PATH (make setup-tex)")
def test_every_table_fits_a_two_column_article(layouts, tmp_path: Path) -> None:
    tables = _tables(layouts)
    assert len(tables) >= 6
    assert _overfull(tables, ARTICLE, tmp_path) == {}


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not on PATH (make setup-tex)")
def test_every_table_fits_ieeetran(layouts, tmp_path: Path) -> None:
    found = subprocess.run(["kpsewhich", "IEEEtran.cls"], capture_output=True, text=True).stdout.strip()
    if not found:
        pytest.skip("IEEEtran.cls is not installed (Debian: texlive-publishers)")
    assert _overfull(_tables(layouts), IEEETRAN, tmp_path) == {}


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not on PATH (make setup-tex)")
@pytest.mark.parametrize("layout", ["column", "page"])
def test_a_standalone_column_or_page_table_is_a_two_column_page(layouts, layout, tmp_path: Path) -> None:
    write_tables(layouts[layout], tmp_path, standalone=True)
    tex = (tmp_path / "ablation.tex").read_text()
    assert tex.startswith("\\documentclass[10pt,twocolumn]{article}")
    proc = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "ablation.tex"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and (tmp_path / "ablation.pdf").is_file()
    assert "Overfull \\hbox" not in (tmp_path / "ablation.log").read_text(errors="replace")
