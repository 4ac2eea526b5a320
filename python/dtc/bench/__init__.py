"""Benchmarks: `python -m dtc.bench NAME [options]`; each NAME is a module here with `main(argv)`."""
