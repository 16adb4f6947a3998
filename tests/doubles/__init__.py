"""Strict test doubles of the HIP runtime and of the ``migraphx`` module (see README.md)."""
