"""tuneserve benchmarks: each part compares side by side in one run; ``make bench`` runs them all.

Never part of ``make test``. Each module is runnable alone (``python -m bench.<part> [--quick]``), prints a
table and writes ``bench/results/<part>.json``; :mod:`bench.report` renders ``docs/BENCHMARKS.md``.
"""
