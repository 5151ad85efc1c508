"""Hardware-in-the-loop suite: the same scenarios on the sim rig and on a real Pi + Pico
(see hil_tests/rigs.py and firmware/README.md)."""
