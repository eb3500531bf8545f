"""Dolly Desktop: Databricks Dolly 2.0 run locally with OpenVINO."""

__version__ = "0.1.0"
APP_NAME = "Dolly Desktop"
