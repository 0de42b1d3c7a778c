"""Boards, building the firmware with arm-none-eabi-gcc, the compile stage, Renode files."""
