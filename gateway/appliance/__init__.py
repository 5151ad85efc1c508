"""gasguard as an appliance on a Raspberry Pi: systemd notification and watchdog, install and
upgrade, and the technician's self-check (``gasguard doctor``).

Kept free of heavy imports on purpose: ``python3 -m gateway.appliance.install`` runs from a
source checkout with the system Python, before any venv exists.
"""
