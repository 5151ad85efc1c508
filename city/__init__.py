"""gasguard city: the district duty desk that receives every kitchen's events.

Processes, each with one job, sharing only PostgreSQL:

- ``ingest`` (N workers): the kitchens' MQTT 5 topics through a shared subscription; each event
  is stored once (site id + seq), and only then acknowledged end to end to the kitchen.
- ``desk``: the duty page (HTTP, pushed live over server-sent events), log-in, and the
  officers' actions on incidents. It has no path to a kitchen's valve: the only thing the city
  ever publishes is an acknowledgement.
- ``watch``: silent sites and the escalation ladder (SMS gateway, webhooks).

It shares the MQTT schema with the gateway (gateway/uplinks/mqtt/schema.py), nothing else.
"""
