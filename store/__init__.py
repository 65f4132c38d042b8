"""Persistence: SQLite (via sqlite-utils) for profiles, sessions and messages; paths on disk.

The store knows nothing of models: it holds text, numbers and file references.
"""
