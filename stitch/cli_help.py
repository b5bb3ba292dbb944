"""The ``--help`` epilogs of the ``stitch`` command: examples and exit codes, per subcommand."""

from __future__ import annotations

#: example command lines, per subcommand ("" is ``stitch --help`` itself)
EXAMPLES: dict[str, list[str]] = {
    "": [
        "stitch validate experiments/unet_coordatt.yaml",
        "stitch run experiments/unet_coordatt.yaml --quiet",
        "stitch report runs/unet_coordatt",
        "stitch run --help",
    ],
    "validate": [
        "stitch validate experiments/unet_coordatt.yaml",
        "stitch validate experiments/*.yaml --debug",
    ],
    "points": [
        "stitch points unet",
        "stitch points unet --arg base_width=32 --size 64 64",
        "stitch points experiments/maskrcnn_panet.yaml --all --json",
    ],
    "run": [
        "stitch run experiments/unet_coordatt.yaml",
        "stitch run experiments/unet_coordatt.yaml --epochs 2 --seeds 0 --device cpu --quiet",
        "stitch run experiments/unet_coordatt.yaml train.optimizer.lr=0.0005 train.loss=ce",
        "stitch run experiments/unet_ablation.yaml --jobs 2 --devices 0,1",
        "stitch run experiments/unet_coordatt.yaml --nproc-per-node 4",
    ],
    "sweep": [
        "stitch sweep experiments/sweep_unet_points.yaml --n-trials 20",
        "stitch sweep experiments/sweep_unet_points.yaml --timeout 3600 --quiet",
        "stitch sweep experiments/sweep_unet_points.yaml --storage postgresql+psycopg2://me@db/studies",
    ],
    "report": [
        "stitch report runs/unet_coordatt",
        "stitch report runs/unet_coordatt runs/unet_cgafusion --out report/",
        "stitch report runs/unet_coordatt --standalone --no-latency",
    ],
    "show": [
        "stitch show runs/unet_coordatt",
        "stitch show runs/unet_coordatt --variant +CA --seed 1 --n 4 --output ca.png",
    ],
    "zoo": [
        "stitch zoo",
        "stitch zoo --json",
        "stitch zoo --markdown --into docs/zoo.md",
        "stitch zoo --plugins experiments/plugins/my_attention.py",
    ],
    "config": [
        "stitch config experiments/unet_coordatt.yaml",
        "stitch config experiments/unet_coordatt.yaml train.epochs=2 seeds=[0,1]",
    ],
    "completion": [
        'eval "$(stitch completion bash)"',
        "stitch completion bash > ~/.local/share/bash-completion/completions/stitch",
        "stitch completion zsh > ~/.zfunc/_stitch",
    ],
}

EXIT_CODES = """\
exit codes:
  0    success
  1    an unexpected error (a bug: the traceback is printed; please report it)
  2    a user mistake (one line "error: ..." naming it and the fix; --debug shows the
       traceback), or a wrong option or argument (a usage line)
  130  interrupted (Ctrl-C)"""

#: the exit codes of the commands that add to the common ones
COMMAND_EXIT_CODES: dict[str, str] = {
    "run": """\
exit codes:
  0    every run finished (or was already done)
  1    a run failed (its error is in runs.sqlite and log.txt), or an unexpected error
  2    a user mistake (one line "error: ..." naming it and the fix; --debug shows the
       traceback), or a wrong option or argument (a usage line)
  130  interrupted (Ctrl-C): the command that resumes (from the last checkpoint) is printed
  with --nproc-per-node: torchrun's exit code""",
    "sweep": """\
exit codes:
  0    the worker stopped: the study has its trials, --timeout passed, or 3 trials failed
       in a row (the last line says which; failed trials' errors are in log.txt)
  1    an unexpected error (a bug: the traceback is printed; please report it)
  2    a user mistake (one line "error: ..." naming it and the fix; --debug shows the
       traceback), or a wrong option or argument (a usage line)
  130  interrupted (Ctrl-C): the command that continues the study is printed""",
}


def epilog(command: str) -> str:
    """The text after the options in ``stitch COMMAND --help`` (``""``: ``stitch --help``): an
    "examples:" block and the exit codes."""
    examples = "\n".join(f"  {line}" for line in EXAMPLES.get(command, []))
    return f"examples:\n{examples}\n\n{COMMAND_EXIT_CODES.get(command, EXIT_CODES)}"
