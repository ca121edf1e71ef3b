"""Bridges from autodiff frameworks to fastmeta's exact meta-gradient.

Each bridge is a module of its own that imports its framework at import time; the
public names are :mod:`fastmeta.jax` and :mod:`fastmeta.torch`. Importing
``fastmeta`` or ``fastmeta.bridges`` imports neither framework.
"""
