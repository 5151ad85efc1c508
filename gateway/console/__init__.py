"""The technician serial console (``gasguard console``).

A line-oriented console for installers and inspectors on a serial cable (Pi UART, USB gadget
``/dev/ttyGS0``) or on stdin/stdout. It never touches the valves, the buses or the safety core:
everything it does to the running controller goes through the local control socket, so
protection never pauses while a technician works.

Modules:

* ``store``: the console's own SQLite file (technicians, lockout, commissioning records, hazard
  ledger, records waiting for the controller) and the site key for signatures, all mode 0600;
* ``auth``: technician id + PIN (scrypt), lockout, first-time set-up;
* ``link``: the control-socket client with a durable queue for console events;
* ``configedit``: staged configuration changes, validated and applied atomically;
* ``commissioning`` / ``hazards``: the signed inspection checklist and the hazard ledger;
* ``scan`` / ``api``: bus scans and the extra control-socket commands (in the controller);
* ``terminal`` / ``lineedit`` / ``session`` / ``commands``: the terminal itself;
* ``cli``: ``gasguard console [--port DEV]``.
"""
