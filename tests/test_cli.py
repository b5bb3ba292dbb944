"""The ``stitch`` command: every user mistake is one line on stderr with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from yaml_snippets import TINY_UNET

import modules_zoo
from stitch.cli import main

ROOT = Path(__file__).resolve().parents[1]

EXPERIMENTS = sorted((ROOT / "experiments").glob("*.yaml"))


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "insertions, expected",
    [
        (
            "- {name: CA, module: CoordAt, at: enc1}",
            "exp.yaml:8: insertions[0].module: insertion 'CA' at 'enc1': unknown module 'CoordAt' — did you mean 'CoordAtt'?",
        ),
        (
            "- {name: CA, module: CoordAtt, at: encc1}",
            "exp.yaml:8: insertions[0].at: insertion 'CA' at 'encc1': no hook point 'encc1' — did you mean 'enc1'",
        ),
        (
            '- {name: CA, module: CoordAtt, at: "encoder*"}',
            "insertion 'CA' at 'encoder*': pattern 'encoder*' matches no hook point",
        ),
        (
            "- {name: CA, module: CoordAtt, at: enc2, args: {channels: 7}}",
            "insertions[0].args: insertion 'CA' at 'enc2': channel mismatch: args.channels=7 but the module receives 16 channels here",
        ),
        (
            "- {name: CGA, module: CGAFusion, at: enc1, mode: replace}",
            "insertion 'CGA' at 'enc1': CGAFusion is a two-input fusion module but this point takes 1 tensor input(s)",
        ),
        (
            "- {name: CGA, module: CGAFusion, at: skip1, mode: after}",
            "insertions[0].mode: insertion 'CGA' at 'skip1': CGAFusion (fusion) cannot be stitched with mode 'after'; it takes: replace",
        ),
        (
            "- {name: SE, module: SE, at: skip1, mode: before}",
            "insertion 'SE' at 'skip1': mode 'before' with a one-input module needs a point with one tensor input",
        ),
        (
            "- {name: CA, module: CoordAtt, at: enc1, args: {reductio: 4}}",
            "insertions[0].args: insertion 'CA' at 'enc1': CoordAtt has no argument 'reductio' — did you mean 'reduction'?",
        ),
        (
            "- {name: CA, module: CoordAtt, at: enc1, mode: after, residual_scale: 0.0}",
            "residual_scale only applies to mode 'residual'",
        ),
        (
            "- {name: SE, module: SE, at: enc2.0, mode: replace}",
            "insertion 'SE' at 'enc2.0': size mismatch: the module outputs [2, 8, 32, 32] but the network expects [2, 8, 16, 16] here; a 1x1 adapter can only fix channels",
        ),
        (
            "- {name: A, module: SE, at: head, mode: replace}\n  - {name: B, module: SE, at: head, mode: replace}",
            "insertion 'B' at 'head': this point is already replaced by insertion 'A'",
        ),
        (
            "- {name: A, module: SE, at: enc2.1.0}\n  - {name: B, module: SplitAttention, at: enc2, mode: replace}",
            "insertion 'B' at 'enc2': this point would discard what is stitched at 'enc2.1.0' by insertion 'A'",
        ),
        (
            '- {name: CA, module: CoordAtt, at: "enc[z-a]"}',
            "insertion 'CA' at 'enc[z-a]': bad pattern 'enc[z-a]'",
        ),
        (
            "- {name: SA, module: SplitAttention, at: enc2.1.0, mode: replace, args: {radix: 0}}",
            "insertions[0].args: insertion 'SA' at 'enc2.1.0': cannot build SplitAttention",
        ),
        (
            "- {name: SE, module: EffectiveSE, at: enc1, args: {gate: foo}}",
            "insertion 'SE' at 'enc1': cannot build EffectiveSE",
        ),
        (
            "- {name: CA, module: CoordAtt, at: enc1, args: {reduction: abc}}",
            "insertion 'CA' at 'enc1': CoordAtt: argument 'reduction'='abc': Input should be a valid integer",
        ),
        (
            "- name: CGA\n    module: CGAFusion\n    at: skip2\n    nest:\n      - {module: SEE, at: conv}",
            "exp.yaml:12: insertions[0].nest[0].module: insertion 'CGA/SEE' at 'conv': unknown module 'SEE' — did you mean 'SE'?",
        ),
        (
            "- name: CGA\n    module: CGAFusion\n    at: skip2\n    nest:\n      - {module: SE, at: convv}",
            "exp.yaml:12: insertions[0].nest[0].at: insertion 'CGA/SE' at 'convv': no hook point 'convv' — did you mean 'conv'",
        ),
        (
            "- {name: CA, module: CoordAtt, at: enc9}",
            "no hook point 'enc9' — did you mean 'enc4' or 'enc3' or 'enc2'?",
        ),
    ],
)
def test_stitching_mistakes_exit_2_with_one_line(
    write_experiment, capsys, insertions: str, expected: str
) -> None:
    path = write_experiment(TINY_UNET + "insertions:\n  " + insertions + "\n")
    code, out, err = run_cli(capsys, "validate", str(path))
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert expected in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "yaml_text, expected",
    [
        (
            TINY_UNET.replace("model: unet", "model: unett"),
            "baseline.model: unknown baseline 'unett' — did you mean 'unet'?",
        ),
        (
            TINY_UNET.replace("base_width: 8", "base_widht: 8"),
            "baseline.args.base_widht: unknown argument 'base_widht' — did you mean 'base_width'?",
        ),
        (
            TINY_UNET.replace("task: segmentation", "task: instance"),
            "task: baseline 'unet' is a segmentation model but the task is 'instance'",
        ),
        (
            TINY_UNET.replace("base_width: 8", "upsampling: nearest"),
            "baseline.args.upsampling: argument 'upsampling'='nearest': Input should be 'transpose' or 'bilinear'",
        ),
        (
            TINY_UNET.replace("base_width: 8", "base_width: abc"),
            "exp.yaml:5: baseline.args.base_width: argument 'base_width'='abc': Input should be a valid integer",
        ),
        (
            TINY_UNET.replace("base_width: 8", "base_width: 0"),
            "baseline.args: cannot build unet with {'in_channels': 3, 'num_classes': 3, 'base_width': 0}: base_width must be at least 1, got 0",
        ),
        (
            TINY_UNET.replace("[32, 32]", "[30, 30]"),
            "exp.yaml:6: probe.image_size: the U-Net needs height and width divisible by 16 (4 poolings), got 30x30; try 32x32",
        ),
        (
            TINY_UNET.replace("probe: {image_size: [32, 32]}", "data: {dataset: shapes, image_size: 100}"),
            "exp.yaml:6: data.image_size: the U-Net needs height and width divisible by 16 (4 poolings), got 100x100; try 96x96",
        ),
        (
            TINY_UNET + "insertions: []\ninsertions: []\n",
            "exp.yaml:8: insertions: key 'insertions' appears twice (also on line 7)",
        ),
        (TINY_UNET + "seeds: [99999999999999999999]\n", "seeds[0]: Input should be less than 2147483648"),
        (
            TINY_UNET.replace("model: unet", "model: maskrcnn")
            .replace("task: segmentation", "task: instance")
            .replace(
                "{in_channels: 3, num_classes: 3, base_width: 8}",
                "{backbone: resnet18, weights: /nonexistent/w.pth}",
            ),
            "baseline.args: cannot build maskrcnn",
        ),
    ],
)
def test_baseline_mistakes_exit_2(write_experiment, capsys, yaml_text: str, expected: str) -> None:
    code, _, err = run_cli(capsys, "validate", str(write_experiment(yaml_text)))
    assert code == 2 and expected in err and err.count("\n") == 1, err


def test_missing_file_and_unknown_points_target(capsys) -> None:
    code, _, err = run_cli(capsys, "validate", "nope.yaml")
    assert code == 2 and "nope.yaml: no such experiment file" in err
    code, _, err = run_cli(capsys, "points", "unte")
    assert code == 2 and "did you mean 'unet'?" in err


def test_debug_shows_the_traceback(write_experiment) -> None:
    path = write_experiment(TINY_UNET + "insertions:\n  - {name: CA, module: CoordAt, at: enc1}\n")
    with pytest.raises(Exception, match="unknown module"):
        main(["--debug", "validate", str(path)])


def test_console_script_exit_code_and_no_traceback(write_experiment) -> None:
    path = write_experiment(TINY_UNET + "insertions:\n  - {name: CA, module: CoordAtt, at: enc9}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "stitch", "validate", str(path)], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: ") and "Traceback" not in proc.stderr
    assert proc.stdout.count("ok") == 0


def test_validate_prints_the_resolved_design(write_experiment, capsys) -> None:
    path = write_experiment(
        TINY_UNET
        + textwrap.dedent("""\
        ablation: one-at-a-time
        seeds: [0, 1, 2]
        insertions:
          - {name: CA, module: CoordAtt, at: "enc*"}
          - {name: CGA, module: CGAFusion, at: "skip*"}
    """)
    )
    code, out, _ = run_cli(capsys, "validate", str(path))
    assert code == 0
    assert "4 variants x 3 seeds [0, 1, 2] = 12 runs" in out
    for text in (
        "Baseline",
        "+CA +CGA",
        "enc1, enc2, enc3, enc4",
        "adapter: CGA at skip1: 1x1 conv 8->16 (+144 params)",
        "ok: 4 variants",
    ):
        assert text in out


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.name for p in EXPERIMENTS])
def test_every_example_experiment_validates(capsys, path: Path) -> None:
    code, out, err = run_cli(capsys, "validate", str(path))
    assert code == 0, err
    assert "ok:" in out


def test_points_unet_lists_aliases_with_shapes(capsys) -> None:
    code, out, _ = run_cli(capsys, "points", "unet", "--arg", "base_width=8", "--size", "32", "32")
    assert code == 0
    assert "enc1, stem" in out and "[2, 16, 16, 16]" in out and "SkipMerge" in out


def test_points_json_has_every_module_path(capsys) -> None:
    code, out, _ = run_cli(capsys, "points", "unet", "--json", "--arg", "base_width=8", "--size", "32", "32")
    rows = json.loads(out)
    by_path = {r["path"]: r for r in rows}
    assert code == 0 and "enc1.0" in by_path and by_path["enc1"]["aliases"] == ["enc1", "stem"]
    assert by_path["skip4"]["inputs"] == [[2, 64, 4, 4], [2, 64, 4, 4]]
    assert by_path["skip4"]["output"] == [2, 128, 4, 4]


def test_points_maskrcnn(capsys) -> None:
    code, out, _ = run_cli(
        capsys,
        "points",
        "maskrcnn",
        "--json",
        "--arg",
        "backbone=resnet18",
        "--arg",
        "min_size=128",
        "--arg",
        "max_size=128",
        "--size",
        "128",
        "128",
    )
    rows = {r["path"]: r for r in json.loads(out)}
    assert code == 0
    assert rows["backbone.body.layer3"]["aliases"] == ["c4"]
    assert rows["backbone.body.layer3"]["output"][1] == 256
    assert rows["roi_heads.mask_head"]["output"][1:] == [256, 14, 14]
    assert set(rows["backbone.fpn"]["output"]) == {"0", "1", "2", "3", "pool"}


def test_zoo_lists_every_module(capsys) -> None:
    import modules_zoo

    code, out, _ = run_cli(capsys, "zoo", "--json")
    entries = {e["name"]: e for e in json.loads(out)}
    assert code == 0 and set(entries) == set(modules_zoo.names())
    assert entries["CGAFusion"]["kind"] == "fusion" and entries["CGAFusion"]["modes"] == ["replace"]
    assert {"name": "reduction", "default": 32, "type": "int", "required": False} in entries["CoordAtt"][
        "arguments"
    ]
    assert entries["CoordAtt"]["fidelity"] == "official-output"
    assert entries["CoordAtt"]["tested_by"] == ["tests/test_zoo.py::test_coordatt_matches_official"]
    assert entries["Identity"]["fidelity"] == "control" and entries["Identity"]["fidelity_note"] == ""
    # an entry that sets none (a plugin's, a `pkg.mod:Class` reference) is shown as unknown
    from torch import nn

    from modules_zoo.registry import entry_from_class
    from stitch.listings import fidelity_text, zoo_json

    plain = entry_from_class("my_mod:Gate", nn.Identity, "my_mod")
    assert (
        zoo_json(plain)["fidelity"] == fidelity_text(plain) == "unknown"
        and zoo_json(plain)["tested_by"] == []
    )


def test_zoo_markdown_prints_the_docs_table_and_rewrites_only_its_block(tmp_path: Path, capsys) -> None:
    from stitch.listings import ZOO_TABLE_BEGIN, ZOO_TABLE_END

    code, table, _ = run_cli(capsys, "zoo", "--markdown")
    index, _, rows = table.partition("\n\n")
    assert code == 0 and rows.startswith("| name | kind | what it does | modes | arguments | reference |")
    # the index above the table names every module once, under its fidelity level
    assert index.startswith("- **matches official code output-for-output**: ") and "`CoordAtt`" in index
    assert sorted(index.count(f"`{name}`") for name in modules_zoo.names()) == [1] * len(modules_zoo.names())
    row = next(line for line in table.splitlines() if line.startswith("| `CoordAtt` |"))
    assert "| **after**, before, residual, replace | `reduction=32` |" in row
    assert row.endswith("| matches official code output-for-output |")
    page = tmp_path / "zoo.md"
    page.write_text(f"# Zoo\n\nprose\n{ZOO_TABLE_BEGIN}\nold table\n{ZOO_TABLE_END}\n\nmore prose\n")
    code, out, _ = run_cli(capsys, "zoo", "--markdown", "--into", str(page))
    assert code == 0 and "module table rewritten" in out
    assert page.read_text() == f"# Zoo\n\nprose\n{ZOO_TABLE_BEGIN}\n{table}{ZOO_TABLE_END}\n\nmore prose\n"
    page.write_text("# Zoo without markers\n")
    code, _, err = run_cli(capsys, "zoo", "--markdown", "--into", str(page))
    assert code == 2 and err.count("\n") == 1 and "has no '<!-- zoo-table:begin -->' line" in err
    assert page.read_text() == "# Zoo without markers\n"
    code, _, err = run_cli(capsys, "zoo", "--into", str(page))
    assert code == 2 and "--into writes the Markdown table: add --markdown" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--out", "{file}"], "is a file, not a directory"),
        (["--out", "{file}/sub"], "is a file, not a directory"),
        (["--device", "foo"], "--device 'foo': use cpu, cuda or cuda:N"),
        (["{run}"], "the same run directory is given twice"),
    ],
)
def test_report_option_mistakes_exit_2(tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    from stitch.store import ResultStore

    run = tmp_path / "run"
    run.mkdir()
    (run / "experiment.yaml").write_text(TINY_UNET)
    ResultStore(run / "runs.sqlite").close()
    afile = tmp_path / "afile"
    afile.write_text("x")
    code = main(["report", str(run), *[a.format(file=afile, run=run) for a in argv]])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
