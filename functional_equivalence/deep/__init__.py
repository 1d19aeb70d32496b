"""Functionally-equivalent extraction of fully connected ReLU networks of any depth (docs/functional_equivalence.md)."""
