"""One module per subcommand: `add_arguments(parser)` and `run(args) -> int`.

Only the chosen subcommand's module is imported, so `metamock serve` pays for nothing else.
"""
