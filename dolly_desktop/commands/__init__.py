"""CLI subcommand families. Each module has `register(subparsers)`; handlers take the parsed
args and return an exit code. They raise DollyError for bad input (exit 2)."""
