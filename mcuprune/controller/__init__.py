"""The host controller in the field: telemetry, drift detection, adaptation, the drift demo."""
