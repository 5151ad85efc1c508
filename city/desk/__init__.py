"""The duty page: HTTP server, log-in and sessions, officers' actions, the live feed."""
