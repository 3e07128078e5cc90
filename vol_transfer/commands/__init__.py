"""One module per ``vol-transfer`` subcommand; each defines ``register(subparsers)``."""
