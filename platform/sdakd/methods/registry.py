"""The method registry (filled by explicit imports in `sdakd.methods`, never by scanning files)."""

from sdakd.registry import Registry

METHODS: Registry = Registry("method", name_attr="name")  # a method class learns its name here
