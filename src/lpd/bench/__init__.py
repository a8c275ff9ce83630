"""Benchmarks: accuracy of the method and its ablations (``lpd.bench.accuracy``), and the
command-line front ends behind ``lpd bench <name>`` (see ``lpd.cli.bench_cmd``).

Kept import-light: each benchmark module pulls in torch and the model only when used."""
