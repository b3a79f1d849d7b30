"""qd studio: a local web page over the engine (server.py, the page in static/)."""
