"""Uplinks: forwarding every stored event to the places that must know (city platform over MQTT,
the fire brigade's remote-monitoring centre over GB/T 26875.3, SMS as a fallback).

How an event travels, and why nothing on this path can slow the safety loop:

1. The safety thread puts the event into the recorder's queue (never blocks) and goes on.
2. The recorder stores it in the event log (fsync), then calls ``Outbox.add`` (another fsync,
   in the outbox file): from then on the event waits for every channel, across crashes and
   power cuts, until that channel's receiver has acknowledged it end to end.
3. Each channel runs on its own thread, drains the outbox in its own order and acknowledges
   items in the outbox when its receiver confirms them.

Down-link safety: no channel is given anything that could open a valve or change the
configuration. ``UplinkContext`` hands a channel a read-only status snapshot and a way to record
an event; that is all.
"""
