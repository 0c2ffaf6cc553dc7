"""Running things for development: an embedded nats-server, the event loop."""
