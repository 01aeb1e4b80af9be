"""The HTTP server: ingest, the v1 read API, AWX-compatible routes, metrics, live stream.

Layout: settings (typed config derived from the one settings table), schema (the error shape,
strict inbound decoding, response types), auth, ingest (bounded queue + writer threads),
v1 / awx (read handlers), metrics, app (routes, error handlers, lifespan, `serve`).
Never imported by the callback or the shipper.
"""
