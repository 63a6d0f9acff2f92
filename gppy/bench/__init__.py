"""Benchmarks of the pipeline's heavy steps against the reference implementations
they replace (`gppy bench ...`): speed, peak memory and agreement of results."""
