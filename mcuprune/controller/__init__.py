"""The host controller in the field: telemetry, drift detection, adaptation, the drift demo."""

# The adaptation steps adapt.py can run, in the order it runs them. Declared here, outside adapt.py
# (which imports torch), so the command line can offer them without paying for that import.
ADAPT_STEPS = ("input", "match", "reprune", "tune", "selftrain", "prior", "calibrate", "monitor", "guard")
# What the host controller runs on drift unless told otherwise: "tune" acts only when labels came
# back, "match" only when it recognises a known corruption; "reprune" and "selftrain" cost accuracy
# here (bench/drift/README.md) and are opt-in.
CONTROLLER_STEPS = ("input", "match", "tune", "prior", "calibrate", "monitor", "guard")
FIRST_CAPTURE = 200  # inputs captured after an alarm before the first update (installed within 300 samples)
REFINE_CAPTURE = 1000  # more inputs captured after it, for a second update on all of them
