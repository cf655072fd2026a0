"""Experiments and benchmarks that measure the library; the core package never imports from here."""
