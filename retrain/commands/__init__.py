"""One module per CLI subcommand, each with DESCRIPTION and main(argv) -> int."""
