"""Talking to a running device: frames and messages, serial link, QEMU, evaluation, updates, power cuts."""
