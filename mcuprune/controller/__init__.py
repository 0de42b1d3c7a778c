"""The host controller in the field: telemetry, drift detection, adaptation, the drift demo."""

# The adaptation steps adapt.py can run, in the order it runs them. Declared here, outside adapt.py
# (which imports torch), so the command line can offer them without paying for that import.
ADAPT_STEPS = ("input", "calibrate", "reprune", "monitor")
