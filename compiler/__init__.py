"""The tracing JIT compiler for dyngrad (built in later issues; empty for now).

Layering: ``compiler`` imports ``dyngrad``; ``dyngrad`` never imports ``compiler``.
"""
