"""numbanorm's asv benchmark suites: one module per op family (see _common for the setup)."""
