"""One module per ``vqtrace`` subcommand: ``add_arguments(parser)`` and ``run(args)``.

The module docstring's first line is the subcommand's one-line help; keep
imports of heavy packages (scapy, textual) inside ``run`` so ``--help`` is fast.
"""
