"""Pico entry point: copied to the board as /main.py (see firmware/README.md)."""

from fixture.app import main

main()
