"""The command line as a whole: help and argument errors come without importing the heavy stack."""

import subprocess
import sys


def test_help_and_argument_errors_do_not_import_torch_transformers_or_peft():
    probe = (
        "import sys\nfrom comptune.cli import main\n"
        "for argv in (['--help'], ['tune', '--help'], ['tune'], ['no-such-command']):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout[-500:] + done.stderr[-2000:]
    assert "required: --budget" in done.stderr or "the following arguments are required" in done.stderr


def test_package_names_still_resolve_lazily():
    import comptune.decomposition as decomposition
    import comptune.tuning as tuning

    assert "Decomposition" in dir(decomposition) and decomposition.Decomposition.__name__ == "Decomposition"
    assert tuning.apply_component_scale.__module__ == "comptune.tuning.component_scale"
    try:
        tuning.no_such_name
    except AttributeError as e:
        assert "no_such_name" in str(e)
    else:
        raise AssertionError("an unknown name must raise AttributeError")


def test_an_interrupted_command_says_so_in_one_line_with_the_command_to_run(monkeypatch, capsys):
    from comptune.cli import main
    from comptune.corpus import datasets

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(datasets, "dataset_texts", interrupted)  # the first thing tune reads
    argv = ["tune", "--method", "lora", "--forget", "train.de", "--retain", "train.en", "--budget", "4", "--out", "/nonexistent/x"]
    assert main(argv) == 130
    err = capsys.readouterr().err.strip()
    assert err == "comptune tune: interrupted; nothing was written; run it again with: comptune " + " ".join(argv)


def test_errors_raised_on_purpose_are_one_line_and_bugs_keep_their_traceback(monkeypatch, capsys):
    import argparse

    import pytest

    import comptune.cli as cli
    from comptune.errors import NonFiniteError, UserError, UserKeyError

    def parser_raising(exc):
        p = argparse.ArgumentParser(prog="comptune")
        sub = p.add_subparsers(dest="command")
        sub.add_parser("boom").set_defaults(func=lambda args: (_ for _ in ()).throw(exc))
        return lambda: p

    for exc, line in ((UserError("bad lr; lower it"), "bad lr; lower it"), (UserKeyError("module 'x' is not decomposed"), "module 'x' is not decomposed"),
                      (NonFiniteError("loss went NaN"), "loss went NaN"), (FileNotFoundError("no such file: a.yaml"), "no such file: a.yaml")):
        monkeypatch.setattr(cli, "build_parser", parser_raising(exc))
        assert cli.main(["boom"]) == 2
        assert capsys.readouterr().err == f"comptune boom: error: {line}\n"
    # the built-ins they subclass still catch them in user code
    assert issubclass(UserKeyError, KeyError) and issubclass(UserError, ValueError) and issubclass(NonFiniteError, FloatingPointError)
    for bug in (KeyError("oops"), ValueError("math domain error"), TypeError("x")):
        monkeypatch.setattr(cli, "build_parser", parser_raising(bug))
        with pytest.raises(type(bug)):
            cli.main(["boom"])


def test_every_model_command_takes_a_device_and_refuses_one_it_does_not_have(capsys):
    import pytest
    import torch

    from comptune._device import resolve_device
    from comptune.cli import main

    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="is not a torch device"):
        resolve_device("gpu0")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the refusal below needs one without")
    for argv in (["tune", "--out", "/tmp/x", "--budget", "4"], ["decompose", "--model", "m", "--data", "d", "--out", "/tmp/x"],
                 ["eval"], ["inspect"], ["attack", "e", "--out", "/tmp/x"], ["sweep", "c.yaml"], ["demo"], ["rollout", "--prompt", "x"],
                 ["decomposition", "report", "d", "--data", "x"], ["pretrain", "--out", "/tmp/x"], ["report", "r"]):
        assert main([*argv, "--device", "cuda"]) == 2, argv
        err = capsys.readouterr().err
        assert "asks for a GPU, but this torch" in err and "use --device cpu" in err, (argv, err)
