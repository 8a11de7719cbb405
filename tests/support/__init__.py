"""Fakes, catalogues and helpers the tests share; never shipped."""
