"""The front door: --help, --version, every subcommand's help, and bad usage as one line with exit 2."""

from __future__ import annotations

import importlib
import importlib.util

import pytest

from conftest import run_vqtrace
from vqtrace import __version__, cli

#: The subcommand modules that exist in this tree (cli.py skips the missing ones).
PRESENT = [name for name in cli.COMMANDS if importlib.util.find_spec(f"vqtrace.commands.{name}") is not None]


def _one_line_error(result) -> str:
    assert result.returncode == 2, result.stdout
    text = result.stderr.decode()
    assert "Traceback" not in text
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def test_version():
    result = run_vqtrace("--version")
    assert result.returncode == 0
    assert result.stdout.decode().strip() == f"vqtrace {__version__}"


def test_help_lists_every_present_subcommand_with_its_summary():
    result = run_vqtrace("--help")
    assert result.returncode == 0 and not result.stderr
    out = " ".join(result.stdout.decode().split())  # argparse wraps to the terminal's width
    assert out.startswith("usage: vqtrace")
    assert "Exit status: 0 success, 1 the analysis found a problem, 2 bad usage or bad input." in out
    for name in PRESENT:
        module = importlib.import_module(f"vqtrace.commands.{name}")
        summary = module.__doc__.strip().splitlines()[0]
        assert f"{name} {summary[:30]}" in out, name


def test_every_subcommand_module_follows_the_contract():
    assert {"decode", "features"} <= set(PRESENT)
    for name in PRESENT:
        module = importlib.import_module(f"vqtrace.commands.{name}")
        assert (module.__doc__ or "").strip(), f"{name}: the docstring's first line is the help"
        assert callable(module.add_arguments) and callable(module.run), name


@pytest.mark.parametrize("name", PRESENT)
def test_subcommand_help(name):
    result = run_vqtrace(name, "--help")
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert out.startswith(f"usage: vqtrace {name}")
    module = importlib.import_module(f"vqtrace.commands.{name}")
    assert module.__doc__.strip().splitlines()[0] in out


@pytest.mark.parametrize(("args", "message"), [
    (("--bogus",), "unrecognized arguments: --bogus"),
    (("nosuchcommand",), "invalid choice: 'nosuchcommand'"),
    (("decode", "--bogus"), "unrecognized arguments: --bogus"),
    (("features", "0x1", "--format"), "unrecognized arguments"),
    (("features", "-T"), "expected one argument"),
])
def test_bad_usage_is_one_line_and_exit_2(args, message):
    line = _one_line_error(run_vqtrace(*args))
    assert line.startswith("vqtrace") and "error:" in line
    assert message in line


def test_no_command_is_bad_usage():
    result = run_vqtrace()
    assert result.returncode == 2
    assert b"usage: vqtrace" in result.stderr and not result.stdout


def test_main_in_process_returns_exit_codes(capsys):
    assert cli.main(["features", "0x1", "-d", "net"]) == 0
    assert cli.main(["features", "GUEST_TSO4,", "-d", "net"]) == 1
    assert cli.main(["features", "nonsense", "-d", "net"]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "nonsense" in captured.err
