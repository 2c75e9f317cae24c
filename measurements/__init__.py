"""measurements stage of ddi-fpga (see the project README)."""
