"""One module per published table or figure, shared by the CLI and ``benchmarks/``."""
