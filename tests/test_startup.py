"""Start-up stays cheap: what the CLI's entry points import (benchmarks/bench_startup.py has the timings).

Every check runs in a new interpreter and looks at ``sys.modules``: an import added at
the top of a module shows up here, where a timing would drown in noise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

HEAVY = ("construct", "numpy", "scapy", "textual")


def loaded_after(code: str, *args: str) -> set[str]:
    """The modules loaded once ``code`` has run in a new interpreter (SystemExit caught)."""
    probe = (f"import sys, json\ntry:\n    {code}\nexcept SystemExit:\n    pass\n"
             "sys.__stdout__.write('\\n' + json.dumps(sorted(sys.modules)))\n")
    result = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, cwd=ROOT,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def cli(*argv: str) -> set[str]:
    """The modules ``vqtrace ARGV...`` loads (in process, output discarded)."""
    code = ("import contextlib, io; from vqtrace import cli\n"
            "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
            f"        cli.main({list(argv)!r})")
    return loaded_after(code)


def heavy(modules: set[str]) -> list[str]:
    return [name for name in HEAVY if name in modules]


@pytest.mark.parametrize("module", ["vqtrace.cli", "vqtrace.errors", "vqtrace.dissectors", "vqtrace.output"])
def test_entry_modules_import_no_heavy_package(module):
    modules = loaded_after(f"import {module}")
    assert module in modules
    assert heavy(modules) == []


def test_help_imports_no_heavy_package_nor_the_dissectors():
    modules = cli("--help")
    assert "vqtrace.commands.dump" in modules  # every command is listed...
    assert heavy(modules) == []  # ...without loading what they need to run
    assert not {"vqtrace.dissectors.layers", "vqtrace.dissectors.features", "logging", "statistics"} & modules


def test_a_command_imports_only_its_own_module():
    modules = cli("features", "0x130000000", "--device", "blk")
    assert "vqtrace.commands.features" in modules
    others = {m for m in modules if m.startswith("vqtrace.commands.") and m != "vqtrace.commands.features"}
    assert others == set()
    assert heavy(modules) == []  # a name or ID in the table: no layer module (construct) needed


def test_dump_scan_loads_neither_numpy_nor_the_analysis(tmp_path):
    page = tmp_path / "page.raw"
    page.write_bytes(bytes(4096))
    modules = cli("dump", "scan", str(page), "--base", "0")
    assert "vqtrace.dump.scan" in modules and "numpy" not in modules  # numpy only for many survivors
    unneeded = {"vqtrace.dump.analyze", "vqtrace.dump.qemu_status", "vqtrace.dump.qmp", "vqtrace.dump.procmem",
                "vqtrace.dump.elfwrite", "vqtrace.dump.queue_spec", "vqtrace.dissectors.features", "numpy.ma",
                "gzip", "socket", "scapy", "textual"}
    assert sorted(m for m in modules if m in unneeded or m.startswith(("vqtrace.requests", "vqtrace.rings"))) == []


def test_dump_info_does_not_load_numpy(tmp_path):
    page = tmp_path / "page.raw"
    page.write_bytes(bytes(4096))
    modules = cli("dump", "info", str(page), "--base", "0")
    assert "vqtrace.dump.report" in modules
    assert "numpy" not in modules and "vqtrace.dump.scan" not in modules


def test_show_without_filter_does_not_load_the_filter_compiler():
    modules = cli("show", str(ROOT / "captures" / "blk-proxy.pcapng"), "-c", "2")
    assert "vqtrace.trace.reader" in modules
    assert not any(m == "vqtrace.filter" or m.startswith("vqtrace.filter.") for m in modules)
    assert "numpy" not in modules and "scapy" not in modules


def test_show_with_a_filter_still_filters():
    result = subprocess.run([sys.executable, "-m", "vqtrace", "show", str(ROOT / "captures" / "blk-proxy.pcapng"),
                             "-Y", 'vhost_user.request == "VHOST_USER_SET_VRING_ADDR"'],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines and all("VHOST_USER_SET_VRING_ADDR" in line for line in lines)


def test_dissectors_names_load_on_first_use():
    from vqtrace import dissectors
    from vqtrace.dissectors import layers, tree

    assert dissectors.get_layer is layers.get_layer and dissectors.Field is tree.Field
    assert {"Layer", "all_layers", "dissect", "get_layer", "parse", "Field"} <= set(dir(dissectors))
    with pytest.raises(AttributeError, match="no_such_name"):
        dissectors.no_such_name  # noqa: B018
    from vqtrace.dissectors import DissectError, blk, get_layer  # a submodule beside lazy names

    assert blk.__name__ == "vqtrace.dissectors.blk" and get_layer("virtio_blk.req").name == "virtio_blk.req"
    assert issubclass(DissectError, dissectors.VqtraceError)


def test_scan_flags_are_the_virtqueue_layout_flags():
    from vqtrace.dissectors import virtqueue
    from vqtrace.dump import scan

    assert scan.VIRTQ_DESC_F_NEXT == virtqueue.VIRTQ_DESC_F_NEXT
    assert scan.F_WRITE == virtqueue.VIRTQ_DESC_F_WRITE
    assert scan.VIRTQ_DESC_F_INDIRECT == virtqueue.VIRTQ_DESC_F_INDIRECT
    assert scan.VIRTQ_DESC_F_AVAIL == virtqueue.VIRTQ_DESC_F_AVAIL
    assert scan.VIRTQ_DESC_F_USED == virtqueue.VIRTQ_DESC_F_USED
    assert sum(virtqueue.SPLIT_DESC_FLAGS.values()) == scan.SPLIT_FLAG_BITS
    assert sum(virtqueue.PACKED_DESC_FLAGS.values()) == scan.PACKED_FLAG_BITS


def test_model_flags_are_the_virtqueue_layout_flags():
    from vqtrace import model
    from vqtrace.dissectors import virtqueue

    assert model.VIRTQ_DESC_F_NEXT == virtqueue.VIRTQ_DESC_F_NEXT
    assert model.VIRTQ_DESC_F_WRITE == virtqueue.VIRTQ_DESC_F_WRITE
    assert model.VIRTQ_DESC_F_INDIRECT == virtqueue.VIRTQ_DESC_F_INDIRECT


def test_dump_scan_does_not_load_construct(tmp_path):
    page = tmp_path / "page.raw"
    page.write_bytes(bytes(4096))
    assert "construct" not in cli("dump", "scan", str(page), "--base", "0")


def test_parser_for_one_command_equals_the_full_one():
    from vqtrace import cli

    full = cli.build_parser()
    for name in ("dump", "features", "show"):
        one = cli.build_parser(name, arguments=False)
        assert _help(one, [name]) == _help(full, [name])
    # the top-level help lists every command whether their arguments are built or not
    assert cli.build_parser(arguments=False).format_help() == full.format_help()


def _help(parser, path: list[str]) -> str:
    for word in path:
        sub = next(a for a in parser._actions if a.dest == "command")
        parser = sub.choices[word]
    return parser.format_help()


def _blas_threads(env_value: str | None) -> tuple[str | None, int]:
    """(OPENBLAS_NUM_THREADS, the threads of the process) once a vqtrace command ran and numpy was imported."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if env_value is not None:
        env["OPENBLAS_NUM_THREADS"] = env_value
    probe = ("import contextlib, io, os, json\nfrom vqtrace import cli\n"
             "with contextlib.redirect_stderr(io.StringIO()):\n    cli.main([])\n"
             "import numpy\n"
             "print(json.dumps([os.environ.get('OPENBLAS_NUM_THREADS'), len(os.listdir('/proc/self/task'))]))\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, env=env,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    setting, threads = json.loads(result.stdout.strip().splitlines()[-1])
    return setting, threads


def test_a_command_runs_numpy_with_one_blas_thread():
    """vqtrace never calls BLAS: numpy imported under a vqtrace command starts no OpenBLAS thread pool."""
    assert _blas_threads(None) == ("1", 1)


def test_a_users_blas_setting_is_kept():
    setting, _ = _blas_threads("2")
    assert setting == "2"
