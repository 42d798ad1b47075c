"""rerankd benchmarks: side-by-side figures from one command; never run as tests.

Entry point: ``python -m bench run --scenario NAME --model NAME`` (see docs/benchmarks.md).
"""
