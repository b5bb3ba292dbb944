"""Your own modules: ``plugins:`` files, ``stitch.register_module``, ``pkg.mod:Class`` references,
``stitch zoo --plugins`` and the one-line errors of each plugin mistake."""

from __future__ import annotations

import json
import os
import re
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from yaml_snippets import tiny_shapes_unet

import modules_zoo
import stitch
from modules_zoo import registry
from stitch.build import stitch_variant
from stitch.cli import main
from stitch.config import load_experiment
from stitch.plugins import load_plugins
from stitch.registry import BASELINES
from stitch.runs import plan_runs
from stitch.store import ResultStore

ROOT = Path(__file__).resolve().parents[1]

#: a plugin file: a registered unary module and a registered fusion module
PLUGIN = '''\
"""Test plugin."""
import torch
from torch import nn

import stitch


@stitch.register_module("{prefix}gain", kind="unary", reference="test", summary="a learned channel gain")
class Gain(nn.Module):
    def __init__(self, channels: int, init: float = 1.0) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.full((channels,), init))

    def forward(self, x):
        return x * self.w[:, None, None]


@stitch.register_module("{prefix}mix", kind="fusion")
class Mix(nn.Module):
    """Mixes the skip and the up-sampled feature."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(0.5))

    def forward(self, x, y):
        return self.a * x + (1 - self.a) * y
'''


@pytest.fixture(autouse=True)
def forget_plugins() -> Iterator[None]:
    """Undo what a test's plugins registered (each test imports its own copy of a file)."""
    before = set(modules_zoo.names())
    yield
    for name in set(modules_zoo.names()) - before:
        registry.unregister(name)


def write_plugin_experiment(folder: Path, prefix: str = "my_", extra: str = "") -> Path:
    """``folder/plugins/attn.py`` and ``folder/exp.yaml`` stitching its modules by YAML alone."""
    (folder / "plugins").mkdir(parents=True, exist_ok=True)
    (folder / "plugins" / "attn.py").write_text(PLUGIN.format(prefix=prefix))
    text = tiny_shapes_unet("plug", folder / "data", epochs=1) + textwrap.dedent(f"""\
        plugins: [plugins/attn.py]
        insertions:
          - {{name: Gain, module: {prefix}gain, at: "enc*"}}
          - {{name: Mix, module: {prefix}mix, at: "skip*", mode: replace}}
        ablation: one-at-a-time
        seeds: [0]
        {extra}""")
    path = folder / "exp.yaml"
    path.write_text(text)
    return path


def test_plugin_modules_validate_train_and_report(tmp_path: Path, capsys, monkeypatch) -> None:
    exp_path = write_plugin_experiment(tmp_path / "study")
    monkeypatch.chdir(tmp_path)  # plugin paths are relative to the experiment file, not here
    assert main(["validate", str(exp_path)]) == 0
    out = capsys.readouterr().out
    assert "plugin: plugins/attn.py" in out and "registers my_gain, my_mix" in out
    assert "data: shapes, 3 classes, 3 channels: every variant is built for it" in out
    assert "my_gain" in out and "my_mix" in out and "ok: 4 variants" in out

    assert main(["run", str(exp_path), "--out", str(tmp_path / "runs"), "--quiet"]) == 0
    run_dir = tmp_path / "runs" / "plug"
    with ResultStore(run_dir / "runs.sqlite") as store:
        rows = store.rows()
    assert [(r.variant, r.status) for r in rows] == [
        ("Baseline", "done"),
        ("+Gain", "done"),
        ("+Mix", "done"),
        ("+Gain +Mix", "done"),
    ]
    assert rows[1].params - rows[0].params == 4 + 8 + 16 + 32  # one gain per channel of enc1..enc4
    recorded = (run_dir / "experiment-folder.txt").read_text().split()
    assert recorded == [os.path.join("..", "..", "study"), str((tmp_path / "study").resolve())]

    # the report of the run directory, from elsewhere, imports the plugin from where it was
    for name in ("my_gain", "my_mix"):  # as in a fresh process: the registrations come from the file
        registry.unregister(name)
    for name in [m for m in sys.modules if m.startswith("stitch_plugin_attn_")]:
        del sys.modules[name]
    monkeypatch.chdir(ROOT)
    assert main(["report", str(run_dir), "--out", str(tmp_path / "report")]) == 0
    table = (tmp_path / "report" / "comparison.md").read_text()
    assert "+Gain" in table and "+Mix" in table

    # the project folder moved with its runs (rsync off a cluster): the relative record still works
    moved = tmp_path / "moved"
    moved.mkdir()
    (tmp_path / "study").rename(moved / "study")
    (tmp_path / "runs").rename(moved / "runs")
    for name in [m for m in sys.modules if m.startswith("stitch_plugin_attn_")]:
        del sys.modules[name]
    for name in ("my_gain", "my_mix"):
        registry.unregister(name)
    assert main(["report", str(moved / "runs" / "plug"), "--out", str(tmp_path / "report2")]) == 0


def test_register_module_is_the_zoos_register_with_an_origin(tmp_path: Path) -> None:
    exp = load_experiment(write_plugin_experiment(tmp_path, prefix="reg_"))
    (plugin,) = load_plugins(exp)
    assert plugin.modules == ["reg_gain", "reg_mix"]
    gain, mix = modules_zoo.get("reg_gain"), modules_zoo.get("reg_mix")
    assert stitch.register_module is registry.register
    assert (gain.kind, gain.modes, gain.summary) == (
        "unary",
        registry.DEFAULT_MODES["unary"],
        "a learned channel gain",
    )
    assert mix.kind == "fusion" and mix.summary == "Mixes the skip and the up-sampled feature."
    assert gain.origin == mix.origin == str((tmp_path / "plugins" / "attn.py").resolve())
    assert [a.name for a in gain.arguments()] == ["init"] and gain.probe_arguments() == ["channels"]
    assert load_plugins(exp)[0].modules == ["reg_gain", "reg_mix"]  # imported once, so no collision


def test_unregistered_class_by_reference_kind_from_forward(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "my_blocks.py").write_text(
        textwrap.dedent("""\
        import torch
        from torch import nn

        class Scale(nn.Module):
            def __init__(self, channels, init=2.0):
                super().__init__()
                self.s = nn.Parameter(torch.full((channels, 1, 1), init))
            def forward(self, x):
                return x * self.s

        class Pick(nn.Module):
            def forward(self, skip, up, unused=None):
                return skip + up
        """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    exp_path = tmp_path / "e.yaml"
    exp_path.write_text(
        tiny_shapes_unet("ref", tmp_path / "data")
        + textwrap.dedent("""\
        insertions:
          - {name: S, module: "my_blocks:Scale", at: [enc2, dec2], mode: residual, residual_scale: 0.5}
          - {name: P, module: "my_blocks.py:Pick", at: skip3}
        """)
    )
    built = stitch_variant(load_experiment(exp_path))
    scale, pick = modules_zoo.get("my_blocks:Scale"), modules_zoo.get("my_blocks.py:Pick")
    assert (scale.kind, scale.origin) == ("unary", "my_blocks")
    assert (pick.kind, pick.modes) == ("fusion", ("replace",))
    assert pick.origin == str((tmp_path / "my_blocks.py").resolve())
    assert sorted((a.module, a.point, a.mode) for a in built.applied) == [
        ("my_blocks.py:Pick", "skip3", "replace"),
        ("my_blocks:Scale", "dec2", "residual"),
        ("my_blocks:Scale", "enc2", "residual"),
    ]
    model = built.model.eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 2, 32, 32)
    # the run id records the reference as written and the class's argument defaults
    (plan,) = [p for p in plan_runs(load_experiment(exp_path)) if p.variant.insertions]
    assert plan.config["insertions"][0]["module"] == "my_blocks:Scale"
    assert plan.config["insertions"][0]["args"] == {"init": 2.0}


def test_ids_of_experiments_without_plugins_ignore_the_plugins_key(tmp_path: Path) -> None:
    base = tiny_shapes_unet("ids", tmp_path / "data") + "insertions:\n  - {name: SE, module: SE, at: enc1}\n"
    (tmp_path / "a.yaml").write_text(base)
    (tmp_path / "p.py").write_text("x = 1\n")
    (tmp_path / "b.yaml").write_text(base + "plugins: [p.py]\n")
    ids = [[p.run_id for p in plan_runs(load_experiment(tmp_path / n))] for n in ("a.yaml", "b.yaml")]
    assert ids[0] == ids[1]


def test_zoo_lists_plugin_modules_with_their_origin(tmp_path: Path, capsys, monkeypatch) -> None:
    write_plugin_experiment(tmp_path, prefix="zoo_")
    monkeypatch.chdir(tmp_path)
    assert main(["zoo", "--plugins", "plugins/attn.py"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    rule = next(i for i, line in enumerate(lines) if "───" in line)
    rows = [line.split() for line in lines[rule + 1 :] if re.match(r"  \S", line)]
    assert [r[0] for r in rows[:2]] == ["zoo_gain", "zoo_mix"]  # what the plugin registers, first
    assert rows[0][-1] == "plugins/attn.py" and "CoordAtt" in [r[0] for r in rows[2:]]
    assert main(["zoo", "--json", "--plugins", "plugins/attn.py"]) == 0
    entries = {e["name"]: e for e in json.loads(capsys.readouterr().out)}
    assert entries["zoo_mix"]["origin"].endswith(os.path.join("plugins", "attn.py"))
    assert entries["CoordAtt"]["origin"] == "zoo"


def plugin_error(
    tmp_path: Path, capsys, plugin_text: str | None, insertion: str, plugins: str = "[p.py]"
) -> str:
    """The one line ``stitch validate`` prints for an experiment with this plugin and insertion."""
    if plugin_text is not None:
        (tmp_path / "p.py").write_text(textwrap.dedent(plugin_text))
    (tmp_path / "e.yaml").write_text(
        tiny_shapes_unet("err", tmp_path / "data") + f"plugins: {plugins}\ninsertions:\n  - {insertion}\n"
    )
    assert main(["validate", str(tmp_path / "e.yaml")]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


GAIN = """\
from torch import nn
class Gain(nn.Module):
    def __init__(self, channels, depth):
        super().__init__()
    def forward(self, x):
        return x
def helper(x):
    return x
"""


@pytest.mark.parametrize(
    ("plugin", "insertion", "plugins", "expected"),
    [
        (
            None,
            "{name: A, module: SE, at: enc1}",
            "[missing.py]",
            ["plugins[0]", "plugin file 'missing.py' does not exist"],
        ),
        (
            None,
            "{name: A, module: SE, at: enc1}",
            "[./]",
            ["plugins[0]", "plugin './' is a folder (", "name a .py file, or a package by its module name"],
        ),
        (
            None,
            "{name: A, module: SE, at: enc1}",
            "[no_such_package.attn]",
            ["plugin module 'no_such_package.attn' cannot be found"],
        ),
        (
            "import torch\nraise RuntimeError('no GPU here')\n",
            "{name: A, module: SE, at: enc1}",
            "[p.py]",
            ["plugin 'p.py' fails to import: RuntimeError: no GPU here (", "p.py:2)"],
        ),
        (
            "def broken(:\n",
            "{name: A, module: SE, at: enc1}",
            "[p.py]",
            ["fails to import: SyntaxError", "p.py:1)"],
        ),
        (
            "import stitch\nfrom torch import nn\n@stitch.register_module('CoordAtt', kind='unary')\nclass C(nn.Module):\n    pass\n",
            "{name: A, module: SE, at: enc1}",
            "[p.py]",
            ["module name 'CoordAtt' is registered twice (the zoo and ", "choose another name"],
        ),
        (
            GAIN,
            "{name: A, module: 'p.py:helper', at: enc1}",
            "[]",
            ["insertions[0].module", "'p.py:helper' is a function, not an nn.Module subclass"],
        ),
        (
            GAIN,
            "{name: A, module: 'p.py:Gian', at: enc1}",
            "[]",
            ["p.py has no 'Gian' (it defines Gain, helper, nn)"],
        ),
        (
            GAIN,
            "{name: A, module: 'p.py:Gain', at: enc1}",
            "[]",
            [
                "insertions[0].args",
                "p.py:Gain needs constructor argument 'depth', which the shape probe cannot fill",
                "set it under args:",
            ],
        ),
    ],
    ids=[
        "missing-file",
        "folder",
        "missing-module",
        "import-error",
        "syntax-error",
        "zoo-collision",
        "not-a-module",
        "no-such-class",
        "unfillable-arg",
    ],
)
def test_each_plugin_mistake_is_one_line_and_exit_2(
    tmp_path, capsys, plugin, insertion, plugins, expected
) -> None:
    line = plugin_error(tmp_path, capsys, plugin, insertion, plugins)
    assert line.startswith(f"error: {tmp_path / 'e.yaml'}:")
    for part in expected:
        assert part in line, line


def test_two_plugins_registering_one_name_name_both(tmp_path: Path, capsys) -> None:
    body = "import stitch\nfrom torch import nn\n@stitch.register_module('twice', kind='unary')\nclass C(nn.Module):\n    pass\n"
    (tmp_path / "q.py").write_text(body)
    line = plugin_error(tmp_path, capsys, body, "{name: A, module: twice, at: enc1}", "[p.py, q.py]")
    assert (
        "module name 'twice' is registered twice (" in line
        and "q.py" in line
        and "rename one of them" in line
    )


def test_validate_says_when_it_cannot_read_the_data(tmp_path: Path, capsys) -> None:
    (tmp_path / "e.yaml").write_text(
        textwrap.dedent(f"""\
        name: nodata
        task: segmentation
        baseline: {{model: unet, args: {{base_width: 4, num_classes: 2}}}}
        data: {{dataset: folder, root: {tmp_path / "nowhere"}, image_size: [32, 32]}}
        """)
    )
    assert main(["validate", str(tmp_path / "e.yaml")]) == 0
    out = capsys.readouterr().out
    assert "data: could not read the folder data (" in out
    assert "built with the baseline's own class count and channels" in out


def test_validate_builds_for_the_datas_class_count(tmp_path: Path, capsys) -> None:
    text = tiny_shapes_unet("fit", tmp_path / "data").replace("num_classes: 3", "num_classes: 5")
    (tmp_path / "e.yaml").write_text(text)
    assert main(["validate", str(tmp_path / "e.yaml")]) == 0
    out = capsys.readouterr().out
    assert "data: shapes, 5 classes, 3 channels" in out
    exp = load_experiment(tmp_path / "e.yaml")
    head = {n: p.shape for n, p in stitch.build_model(exp, "baseline").named_parameters()}["head.weight"]
    assert head[0] == 2  # the builder's default; validate printed the 5-class model's count
    from stitch.runs import experiment_data

    fitted, _ = experiment_data(exp)
    params = sum(p.numel() for p in stitch.build_model(fitted, "baseline").parameters())
    assert f"{params / 1e3:.1f}k" in out


def test_example_plugin_experiment_validates(capsys) -> None:
    assert main(["validate", str(ROOT / "experiments" / "plugins" / "unet_my_attention.yaml")]) == 0
    out = capsys.readouterr().out
    assert "registers eca" in out and "my_attention.py:GatedSkip" in out and "ok: 4 variants" in out


def test_sweep_over_plugin_modules(tmp_path: Path, capsys) -> None:
    exp_path = write_plugin_experiment(tmp_path, prefix="sw_")
    text = exp_path.read_text().split("insertions:")[0] + textwrap.dedent("""\
        sweep:
          trials: 2
          epochs: 1
          sampler: random
          pruner: none
          slots:
            - name: ENC
              at: [enc1, enc2]
              modules: [sw_gain, "plugins/attn.py:Gain", SE]
              args:
                sw_gain: {init: [0.5, 1.0]}
        """)
    exp_path.write_text(text)
    assert main(["validate", str(exp_path)]) == 0
    assert "sweep" in capsys.readouterr().out
    assert main(["sweep", str(exp_path), "--out", str(tmp_path / "runs"), "--quiet"]) == 0
    with ResultStore(tmp_path / "runs" / "plug" / "runs.sqlite") as store:
        assert len([r for r in store.rows() if r.status == "done"]) == 2


def test_a_factory_baseline_notes_what_it_loaded(tmp_path: Path, capsys) -> None:
    (tmp_path / "nets.py").write_text(
        textwrap.dedent("""\
        import stitch
        from torch import nn

        def make(in_channels: int = 3, num_classes: int = 2, width: int = 8) -> nn.Module:
            net = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, num_classes, 1))
            stitch.add_note(net, "loaded 4 tensors from nowhere.pth")
            return net
        """)
    )
    (tmp_path / "e.yaml").write_text(
        textwrap.dedent("""\
        name: factory
        task: segmentation
        baseline: {model: "nets.py:make", args: {width: 4}}
        probe: {image_size: [16, 16]}
        insertions:
          - {name: Gain, module: SE, at: "0"}
        """)
    )
    assert main(["validate", str(tmp_path / "e.yaml")]) == 0
    out = capsys.readouterr().out
    assert "baseline nets.py:make: loaded 4 tensors from nowhere.pth" in out
    assert "ok: 2 variants" in out


def test_a_plugin_fixed_after_a_failed_import_imports_cleanly(tmp_path: Path, capsys) -> None:
    body = PLUGIN.format(prefix="fix_") + textwrap.dedent("""
        @stitch.register_baseline("fix_net")
        def fix_net(in_channels: int = 3, num_classes: int = 2) -> nn.Module:
            return nn.Conv2d(in_channels, num_classes, 1)
        """)
    broken = body + "raise RuntimeError('bug further down')\n"
    line = plugin_error(tmp_path, capsys, broken, "{name: A, module: fix_gain, at: enc1}", "[p.py]")
    assert "fails to import: RuntimeError: bug further down (" in line
    assert "fix_gain" not in modules_zoo.names()  # what it registered before failing is undone
    assert "fix_net" not in BASELINES
    (tmp_path / "p.py").write_text(body)
    assert main(["validate", str(tmp_path / "e.yaml")]) == 0
    assert "registers fix_gain, fix_mix, baseline fix_net" in capsys.readouterr().out
    BASELINES.remove("fix_net")


def test_a_plugin_imports_files_next_to_it(tmp_path: Path, capsys) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "sibling_core.py").write_text("SCALE = 3.0\n")
    (tmp_path / "lib" / "attn.py").write_text(
        textwrap.dedent("""\
        import stitch
        from torch import nn
        from sibling_core import SCALE

        @stitch.register_module("sib_scale", kind="unary")
        class Scale(nn.Module):
            def __init__(self, channels):
                super().__init__()
            def forward(self, x):
                return x * SCALE
        """)
    )
    line = "{name: A, module: sib_scale, at: enc1}"
    (tmp_path / "e.yaml").write_text(
        tiny_shapes_unet("sib", tmp_path / "data") + f"plugins: [lib/attn.py]\ninsertions:\n  - {line}\n"
    )
    assert main(["validate", str(tmp_path / "e.yaml")]) == 0
    assert str(tmp_path / "lib") not in sys.path  # only while the plugin is imported
    assert main(["zoo", "--plugins", str(tmp_path / "e.yaml")]) == 0  # an experiment's plugins
    assert "sib_scale" in capsys.readouterr().out


def test_validate_compares_a_factorys_class_scores_with_the_data(tmp_path: Path, capsys) -> None:
    (tmp_path / "nets.py").write_text(
        "from torch import nn\n"
        "def make(in_channels: int = 3, classes: int = 2) -> nn.Module:\n"
        "    return nn.Conv2d(in_channels, classes, 1)\n"
    )
    text = tiny_shapes_unet("k", tmp_path / "data").replace("model: unet", 'model: "nets.py:make"')
    (tmp_path / "e.yaml").write_text(text.replace("args: {base_width: 4}", "args: {classes: 2}"))
    assert main(["validate", str(tmp_path / "e.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(
        "baseline nets.py:make gives 2 class scores per pixel but the shapes data has 3 classes; "
        "set its class-count argument in baseline.args to 3"
    )


def test_a_registered_function_returning_no_module_says_so(tmp_path: Path, capsys) -> None:
    plugin = "import stitch\n@stitch.register_module('fn_bad', kind='unary')\ndef bad(channels):\n    return 'nope'\n"
    line = plugin_error(tmp_path, capsys, plugin, "{name: A, module: fn_bad, at: enc1}", "[p.py]")
    assert "insertions[0].module" in line and "fn_bad returned a str, not an nn.Module" in line
