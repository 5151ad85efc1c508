"""The ``vm`` HIL rig: the appliance on a real Debian bookworm kernel with systemd in QEMU.

* ``image``: builds the guest's disk image once (debootstrap, the gpio-sim module, the wheels)
  and caches it under ``build/vm/``;
* ``protocol``: the JSON line protocol QEMU's monitor (QMP) and guest agent (QGA) speak;
* ``machine``: boots a guest on a copy-on-write overlay of that image, with its watchdog, its
  second UART on a host socket (the RS-485 bus) and its simulated GPIO chip.
"""
