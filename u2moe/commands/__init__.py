"""CLI subcommands: argument parsing and user-facing output only; the work lives elsewhere."""
