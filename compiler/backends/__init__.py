"""Executors of the IR. ``interp`` (numpy) is the oracle every other backend is tested
against."""
