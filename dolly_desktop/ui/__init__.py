"""PySide6 user interface. Domain logic lives in dolly_desktop.core."""
