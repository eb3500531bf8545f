"""Every run kept: the SQLite store with its append-only migrations, search and exports
(store), and the one run-and-record path the window and the CLI share (runs).

May import: generation (the contract and params, never an engine implementation), models and
the basics.
"""
