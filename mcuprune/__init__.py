"""mcuprune: trained network -> pruned int8 firmware for Cortex-M, run bit-exact in QEMU."""

__version__ = "0.1.0"
