"""Dolly Desktop: Databricks Dolly 2.0 run locally with OpenVINO."""

import sys

# A private, local app sends no usage data: nncf and OpenVINO's converter report through
# openvino_telemetry (and leave a client id in ~/intel) whenever it imports, and fall back to
# their own stubs when it does not. Every process of the app imports this package first.
sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]

__version__ = "0.1.0"
APP_NAME = "Dolly Desktop"
