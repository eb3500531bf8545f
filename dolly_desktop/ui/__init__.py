"""The PySide6 window: main window, settings dialog, history panel, the engine's worker
thread (workers) and the one background-job helper (background), typed settings.

The only package that imports PySide6. May import: history, generation, models, the basics.
"""
