"""The safety process: the bus pollers, the safety core, the valves and the annunciator, the
event log and the two local sockets, and nothing else.

* ``loop``: the safety thread (inputs in, valves first, then lights, then records);
* ``pollers``: the one place bus pollers are built, restarted on reload and paused for a scan;
* ``controller``: the site wiring, start-up (gas off) and shutdown (gas off), config reload;
* ``handlers``: what the control socket and the uplink socket answer;
* ``main``: ``gasguard-safety``, as systemd runs it.

It never imports the uplinks, the console or a network library.
"""
