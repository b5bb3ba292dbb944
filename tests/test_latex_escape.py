"""Every text that goes into a LaTeX table is escaped: captions (the user's and stitch's own
sentences), variant and insertion names, column headers, experiment names. Labels are restricted
by the schema instead (``\\ref`` must name a label as written). Compiled with pdflatex where it
is installed."""

from __future__ import annotations

import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_report import make_run_dir

from stitch.config import load_experiment
from stitch.errors import ConfigError
from stitch.report import write_report
from stitch.report.render_latex import to_latex
from stitch.report.table import Cell, Column, Row, Table, latex_escape

HOSTILE = "a_b & c%$#{}~^\\"
ESCAPED = r"a\_b \& c\%\$\#\{\}\textasciitilde{}\textasciicircum{}\textbackslash{}"
#: more than TeX's specials: characters the OT1 fonts draw wrongly, line breaks, a blank line (a
#: paragraph break inside a caption is a TeX error), accents, CJK and an emoji
WILD = (
    HOSTILE
    + " <x> | 50% caf\u00e9 na\u00efve \u00f0 \u6f22 \U0001f600 \u2212 \u00b1\nline\n\nnew\tpara \x00\x1b"
)


def pdflatex(folder: Path, name: str, hostile: bool = True) -> None:
    """Compile ``folder/name.tex`` (skipped where pdflatex is not installed); with ``hostile``,
    the PDF's text (where pdftotext is installed) shows the hostile characters as written."""
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex is not on PATH (Debian: apt-get install texlive-latex-base)")
    proc = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", f"{name}.tex"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    if hostile and shutil.which("pdftotext"):
        text = subprocess.run(["pdftotext", f"{name}.pdf", "-"], cwd=folder, capture_output=True, text=True)
        # OT1's \_ is a rule, not a glyph: with the Type 1 Computer Modern fonts (which texlive-science
        # brings in, texlive-fonts-recommended) pdftotext reads no underscore there
        assert re.search(r"a_? ?b & c%\$#\{\}", text.stdout.replace("\n", " ")), text.stdout


def test_tex_specials_are_escaped() -> None:
    assert latex_escape(HOSTILE) == ESCAPED


def test_any_text_becomes_printable_ascii_without_a_bare_special() -> None:
    rng = random.Random(0)
    alphabet = [chr(c) for c in range(0, 0x250)] + list(
        "\u2212\u00b1\u2026\u201c\u201d\u6f22\U0001f600\u2028"
    )
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        tex = latex_escape(text)
        assert all(" " <= c <= "~" for c in tex), (text, tex)
        # with every command and escaped character taken out, no TeX special is left
        rest = re.sub(r"\\(?:[A-Za-z]+|[^A-Za-z])", "", tex)
        assert not set(rest) & set("&%$#_^\\"), (text, tex, rest)


def test_a_table_full_of_specials_compiles(tmp_path: Path) -> None:
    table = Table(
        name="hostile",
        columns=[
            Column("variant", "Variant", "Variant", "l"),
            Column("check:x", WILD, latex_escape(WILD)),
        ],
        rows=[Row(WILD, "exp", WILD, {"variant": Cell(WILD, latex_escape(WILD)), "check:x": Cell("1", "1")})],
        caption=WILD,
        label="tab:hostile",
        notes=[WILD],
        records=[],
    )
    tex = to_latex(table, standalone=True)
    assert "a_b &" not in tex and "\x00" not in tex and "\n\n" not in tex.split("\\begin{table}")[1]
    assert tex.count(ESCAPED) == 3  # caption, header, cell
    (tmp_path / "hostile.tex").write_text(tex)
    pdflatex(tmp_path, "hostile")


def test_a_report_with_a_hostile_caption_compiles(tmp_path: Path) -> None:
    run_dir, _ = make_run_dir(tmp_path, name="a_b-c.d", seeds=(0, 1, 2))
    text = (run_dir / "experiment.yaml").read_text()
    caption = WILD.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace('"', '\\"')
    caption = caption.replace("\x00", "\\0").replace("\x1b", "\\e")
    text = text.replace("caption: Attention in a tiny U-Net.", f'caption: "{caption}"')
    (run_dir / "experiment.yaml").write_text(text)
    assert load_experiment(run_dir / "experiment.yaml").cfg.report.caption == WILD
    out = tmp_path / "report"
    write_report([run_dir], out, standalone=True, costs=False, latency=False)
    for name in ("ablation", "comparison"):
        tex = (out / f"{name}.tex").read_text()
        assert HOSTILE not in tex and (name != "ablation" or ESCAPED in tex)  # the user's caption
        pdflatex(out, name, hostile=name == "ablation")  # the comparison has no user caption


def test_names_in_tables_cannot_hold_specials(tmp_path: Path) -> None:
    """Insertion (so variant) and experiment names are refused with one line: they name files."""
    base = "name: x\ntask: segmentation\nbaseline: {model: unet}\n"
    for text in (
        base + f"insertions:\n  - {{name: '{HOSTILE}', module: SE, at: enc1}}\n",
        base.replace("name: x", f"name: '{HOSTILE}'"),
    ):
        (tmp_path / "e.yaml").write_text(text)
        with pytest.raises(ConfigError, match="a name starts with a letter or digit") as info:
            load_experiment(tmp_path / "e.yaml")
        assert "\n" not in str(info.value)
