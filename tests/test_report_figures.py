"""The report's figures are paper-ready: no Type 3 font in any PDF (pdffonts where installed, else the
PDF's own font dictionaries), as wide as ``report.layout``, the Okabe-Ito palette for every series,
and the paired plot draws one line per seed with a y axis zoomed to the data."""

from __future__ import annotations

import contextlib
import dataclasses
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import matplotlib
import pytest
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from test_report import make_run_dir

from stitch.report import load_results, write_report
from stitch.report.figure_style import LAYOUT_WIDTH_IN, OKABE_ITO, PNG_DPI
from stitch.report.paired_plot import SEED_COLOR
from stitch.report.plots import curves_figure, metrics_figure

FONT_SUBTYPES = rb"Type0|Type1|Type3|TrueType|MMType1|CIDFontType0|CIDFontType2"


def font_subtypes_from_bytes(pdf: Path) -> set[str]:
    """Font subtypes named in the PDF's dictionaries, read from the bytes themselves and from every
    Flate stream (object streams would hide them otherwise; matplotlib writes them uncompressed)."""
    data = pdf.read_bytes()
    chunks = [data]
    for m in re.finditer(rb"stream\r?\n(.*?)endstream", data, re.S):
        with contextlib.suppress(zlib.error):  # not Flate (an image?): no font dictionaries inside
            chunks.append(zlib.decompress(m.group(1)))
    pattern = re.compile(rb"/Subtype\s*/(" + FONT_SUBTYPES + rb")\b")
    return {m.group(1).decode() for c in chunks for m in pattern.finditer(c)}


def pdffonts_rows(pdf: Path) -> list[str]:
    """One line per font of ``pdffonts`` (poppler); the type column says ``Type 3``, ``TrueType`` …"""
    out = subprocess.run(["pdffonts", str(pdf)], capture_output=True, text=True, check=True).stdout
    return out.splitlines()[2:]  # after the header and the dashes


def assert_no_type3(pdf: Path) -> None:
    subtypes = font_subtypes_from_bytes(pdf)
    assert subtypes, f"{pdf.name}: no font found (the parser is broken?)"
    assert "Type3" not in subtypes, f"{pdf.name} embeds a Type 3 font: {subtypes}"
    if shutil.which("pdffonts"):
        assert not any("Type 3" in row for row in pdffonts_rows(pdf)), (
            f"pdffonts: {pdf.name} has a Type 3 font"
        )


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, list[Path]]:
    """A run directory (4 variants x 4 seeds, test_report's) and the files ``write_report`` wrote."""
    tmp = tmp_path_factory.mktemp("figures")
    run_dir, _ = make_run_dir(tmp)
    return run_dir, write_report([run_dir], tmp / "out", costs=False)


@pytest.fixture(scope="module")
def results(report):
    return load_results(report[0], costs=False)


def test_report_pdfs_embed_truetype_not_type3_at_the_layout_size(report) -> None:
    files = report[1]
    pdfs = [p for p in files if p.suffix == ".pdf"]
    assert sorted(p.name for p in pdfs) == ["curves.pdf", "metrics.pdf"]
    for pdf in pdfs:
        assert_no_type3(pdf)
        assert font_subtypes_from_bytes(pdf) & {"TrueType", "CIDFontType2"}
        box = re.search(rb"/MediaBox \[\s*0 0 ([\d.]+) ([\d.]+)", pdf.read_bytes())
        assert box and float(box.group(1)) == pytest.approx(72 * 3.5)  # report.layout: column (the default)
        assert png_size(pdf.with_suffix(".png"))[0] == round(3.5 * PNG_DPI)


def test_the_type3_check_catches_a_type3_pdf(tmp_path: Path) -> None:
    fig = Figure(figsize=(2, 1))
    fig.add_subplot().set_title("Type 3 text")
    pdf = tmp_path / "type3.pdf"
    with matplotlib.rc_context({"pdf.fonttype": 3}):
        fig.savefig(pdf)
    assert "Type3" in font_subtypes_from_bytes(pdf)
    with pytest.raises(AssertionError, match="Type 3"):
        assert_no_type3(pdf)
    if shutil.which("pdffonts"):
        assert any("Type 3" in row for row in pdffonts_rows(pdf))
    # compressed the same way a PDF's object stream would be: still found
    packed = tmp_path / "packed.pdf"
    packed.write_bytes(b"%PDF-1.5\n1 0 obj\nstream\n" + zlib.compress(pdf.read_bytes()) + b"endstream\n")
    assert "Type3" in font_subtypes_from_bytes(packed)


@pytest.mark.parametrize("layout", ["column", "page", "landscape"])
def test_figures_are_as_wide_as_the_layout(results, layout: str) -> None:
    results.exp.cfg.report.layout = layout
    try:
        for fig in (metrics_figure(results), curves_figure(results)):
            assert fig.get_size_inches()[0] == pytest.approx(LAYOUT_WIDTH_IN[layout])
    finally:
        results.exp.cfg.report.layout = "column"


def test_many_metrics_wrap_into_rows_of_the_column_width(results) -> None:
    # the PANet report's seven metrics made a 25-inch strip: now rows of a 3.5-inch figure
    metrics = results.metrics
    results.metrics = ["miou", "mdice"] * 4
    try:
        fig = metrics_figure(results)
    finally:
        results.metrics = metrics
    width, height = fig.get_size_inches()
    panels = [ax for ax in fig.axes if ax.get_ylabel()]
    assert width == pytest.approx(3.5) and len(panels) == 9  # 8 metrics + the Delta panel
    assert len({round(ax.get_position().y0, 3) for ax in panels}) == 5  # two per row
    assert height < 12
    for ax in panels:  # 8-9 pt text
        assert 8 <= ax.yaxis.label.get_fontsize() <= 9
        assert all(8 <= t.get_fontsize() <= 9 for t in ax.get_xticklabels())


def test_every_series_uses_the_colour_blind_safe_palette(results) -> None:
    allowed = {c.lower() for c in OKABE_ITO}
    curves = curves_figure(results)
    *panels, legend_slot = curves.axes
    assert [t.get_text() for t in legend_slot.get_legend().get_texts()] == [v.name for v in results.variants]
    for ax in panels:
        colours = [to_hex(line.get_color()) for line in ax.lines]
        assert colours and set(colours) <= allowed
        assert colours[0] == "#000000"  # the baseline
        assert len(set(colours)) == len(results.variants)
    metrics = metrics_figure(results)
    for ax in metrics.axes:
        series = [
            to_hex(line.get_color()) for line in ax.lines if to_hex(line.get_color()) != to_hex(SEED_COLOR)
        ]
        assert series and set(series) <= allowed


def test_paired_plot_draws_one_line_per_seed_zoomed_to_the_data(tmp_path: Path) -> None:
    run_dir, _ = make_run_dir(tmp_path, skip={"+ECA": {3}})
    res = load_results(run_dir, costs=False)
    fig = metrics_figure(res)
    miou_ax = fig.axes[0]
    lines = {line.get_gid(): line for line in miou_ax.lines if (line.get_gid() or "").startswith("seed")}
    assert sorted(lines) == ["seed 0", "seed 1", "seed 2", "seed 3"]
    assert list(lines["seed 0"].get_xdata()) == [0, 1, 2, 3]
    assert list(lines["seed 3"].get_xdata()) == [0, 1, 3]  # +ECA has no seed 3
    assert lines["seed 0"].get_ydata()[0] == pytest.approx(70.0)  # Baseline, seed 0, in %
    low, high = miou_ax.get_ylim()
    assert 65 < low < 69 and 78 < high < 82  # not from 0: a 6-point difference fills the panel
    delta_ax = fig.axes[-1]
    assert delta_ax.get_title() == "vs Baseline\n95 % CI"
    assert [t.get_text() for t in delta_ax.get_xticklabels()] == ["+SE", "+ECA", "+SE +ECA"]


def test_one_seed_per_variant_shows_the_deltas_without_an_interval(tmp_path: Path) -> None:
    run_dir, _ = make_run_dir(tmp_path, seeds=(0,))
    fig = metrics_figure(load_results(run_dir, costs=False))
    seed_lines = [line for line in fig.axes[0].lines if (line.get_gid() or "").startswith("seed")]
    assert len(seed_lines) == 1 and len(seed_lines[0].get_xdata()) == 4
    assert fig.axes[-1].get_title() == "vs Baseline\nno CI (1 seed)"


def test_a_design_without_a_baseline_has_no_delta_panel(results) -> None:
    fig = metrics_figure(dataclasses.replace(results, reference=None, tests={}))
    assert [ax.get_ylabel() for ax in fig.axes] == ["mIoU (%)", "mDice (%)"]


def test_loss_panels_share_one_scale_and_name_the_loss(results) -> None:
    """The training and validation loss are the same configured loss (tests/test_val_loss.py), drawn
    on one y range so the gap between them shows, each labelled with the loss it is."""
    loss = results.exp.cfg.train.loss
    panels = [ax for ax in curves_figure(results).axes[:-1] if ax.get_ylabel() == f"loss: {loss}"]
    assert sorted(ax.get_title() for ax in panels) == ["Training loss", "Validation loss"]
    assert panels[0].get_ylim() == panels[1].get_ylim()


def test_committed_example_figures_have_no_type3_font() -> None:
    """The example reports under reports/ (regenerated with these defaults) pass the same font check."""
    pdfs = sorted((Path(__file__).resolve().parents[1] / "reports").glob("*/*.pdf"))
    assert pdfs
    for pdf in pdfs:
        assert_no_type3(pdf)
