"""The shared helpers: atomic files, train/eval mode switching, the canonical hash, registries."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from torch import nn

from stitch.errors import StitchError
from stitch.fileio import atomic_path, atomic_write, write_json, write_text
from stitch.hashing import canonical_json, digest
from stitch.model_mode import eval_mode, train_mode
from stitch.registry import BASELINES, OPTIMIZERS, TASKS, Registry


# ----------------------------------------------------------------------------- fileio
def test_atomic_write_replaces_the_file_only_when_complete(tmp_path):
    path = tmp_path / "table.md"
    write_text(path, "old\n")
    with pytest.raises(RuntimeError), atomic_write(path) as f:
        f.write("half of the new")
        raise RuntimeError("disk full")
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.md"]  # no temporary file left
    with atomic_write(path, "wb") as f:
        f.write(b"\x00new")
    assert path.read_bytes() == b"\x00new"


def test_atomic_path_keeps_the_suffix_and_creates_the_folder(tmp_path):
    target = tmp_path / "plots" / "curves.png"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".png" and tmp != target
        tmp.write_bytes(b"png")
    assert target.read_bytes() == b"png" and not tmp.exists()


def test_written_files_get_the_permissions_of_a_plain_open(tmp_path):
    (tmp_path / "plain.txt").write_text("x")
    write_text(tmp_path / "atomic.txt", "x")
    mode = (tmp_path / "plain.txt").stat().st_mode
    assert (tmp_path / "atomic.txt").stat().st_mode == mode
    (tmp_path / "shared.txt").write_text("x")
    (tmp_path / "shared.txt").chmod(0o640)
    write_text(tmp_path / "shared.txt", "y")  # replacing a file keeps its permissions
    assert (tmp_path / "shared.txt").stat().st_mode & 0o777 == 0o640


def test_write_json_ends_with_a_newline(tmp_path):
    write_json(tmp_path / "a.json", {"b": 1, "a": [1, 2]}, indent=1)
    text = (tmp_path / "a.json").read_text()
    assert text.endswith("}\n") and json.loads(text) == {"b": 1, "a": [1, 2]}


def test_atomic_write_refuses_append():
    with pytest.raises(ValueError, match="whole files"), atomic_write("x", "a"):
        pass


# ----------------------------------------------------------------------------- model_mode
def _net() -> nn.Module:
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Dropout(0.5))
    net.train()
    net[2].eval()  # a submodule deliberately in another mode
    return net


def test_eval_mode_restores_every_submodule_also_after_an_error():
    net = _net()
    with pytest.raises(ValueError), eval_mode(net):
        assert not any(m.training for m in net.modules())
        raise ValueError
    assert [m.training for m in net.modules()] == [True, True, True, False]


def test_train_mode_can_keep_batchnorm_statistics():
    net = _net().eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with train_mode(net, keep_batchnorm_stats=True):
        assert net.training
        net(torch.randn(2, 1, 8, 8))
    assert not net.training
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key
    with train_mode(net):
        net(torch.randn(2, 1, 8, 8))
    assert not torch.equal(net[1].running_mean, before["1.running_mean"])


# ----------------------------------------------------------------------------- hashing
def test_digest_is_sha256_of_canonical_json():
    value = {"b": [1, 2], "a": {"y": 1.5, "x": None}}
    assert canonical_json(value) == '{"a":{"x":null,"y":1.5},"b":[1,2]}'
    assert digest(value) == hashlib.sha256(canonical_json(value).encode()).hexdigest()
    assert digest("text", 8) == hashlib.sha256(b"text").hexdigest()[:8]
    assert digest({"a": 1, "b": 2}) == digest({"b": 2, "a": 1})


# ----------------------------------------------------------------------------- registry
def test_registry_is_a_lazy_read_only_mapping():
    reg: Registry[object] = Registry("thing", {"json": "json:dumps", "hashlib": "hashlib"})
    assert list(reg) == ["json", "hashlib"] and len(reg) == 2 and "json" in reg
    assert reg["json"] is json.dumps and reg["hashlib"] is hashlib
    assert reg.get("nope") is None

    @reg.register("mine")
    def mine() -> None: ...

    assert reg["mine"] is mine and list(reg)[-1] == "mine"
    with pytest.raises(ValueError, match="registered twice"):
        reg.add("mine", print)


def test_registry_lookup_names_the_choices():
    with pytest.raises(StitchError, match=r"unknown optimizer 'adamm' — did you mean 'adam'"):
        OPTIMIZERS.lookup("adamm")
    with pytest.raises(StitchError, match="expected one of segmentation, instance"):
        TASKS.lookup("xyz")


def test_harness_registries_resolve():
    assert list(BASELINES) == [
        "unet",
        "maskrcnn",
        "timm_unet",
        "fcn_resnet50",
        "deeplabv3_resnet50",
        "deeplabv3_mobilenet_v3_large",
        "lraspp_mobilenet_v3_large",
    ]
    assert BASELINES["unet"].name == "unet" and BASELINES["maskrcnn"].task == "instance"
    params = [nn.Parameter(torch.zeros(1))]
    from stitch.config import OptimizerCfg

    opt = OPTIMIZERS.lookup("sgd")(params, OptimizerCfg(name="sgd", lr=0.1, momentum=0.5))
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.5


# ----------------------------------------------------------------------------- errors
def test_exception_text_quotes_a_library_error_on_one_line():
    from stitch.errors import exception_text

    exc = ValueError("first line\n  second   line")
    assert exception_text(exc) == "first line"
    assert exception_text(exc, join_lines=True) == "first line second line"
    assert exception_text(ValueError("x" * 300), join_lines=True, limit=200) == "x" * 197 + "..."
    assert exception_text(KeyError()) == "KeyError" == exception_text(KeyError(), join_lines=True)


def test_stale_temporaries_of_killed_writers_are_removed_and_nothing_else(tmp_path):
    from stitch.fileio import atomic_path, remove_stale_temporaries

    keep = [tmp_path / ".lock", tmp_path / "ckpt" / "r1" / "epoch-0001.pt", tmp_path / ".hidden.tmp"]
    for path in keep:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("keep")
    stale = []
    for target in (tmp_path / "ckpt" / "r1" / "epoch-0002.pt", tmp_path / "report" / "ablation.tex"):
        with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
            stale.append(tmp)
            raise KeyboardInterrupt  # stands for SIGKILL: leave the file as a killed writer would
    for tmp in stale:  # atomic_path removed them on the way out; put back what a SIGKILL leaves
        tmp.write_bytes(b"PK half")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted(stale)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale)
