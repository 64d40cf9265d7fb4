"""Benchmarks behind `m2cd bench ...`: each reports medians and a baseline measured in the same run."""
