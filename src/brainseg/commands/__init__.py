"""One module per sub-command: each defines NAME, HELP, add_arguments(parser) and run(args) -> int.

`brainseg.cli` lists them in COMMANDS; a module is imported only when its command runs, so
`brainseg --help` stays quick.
"""
