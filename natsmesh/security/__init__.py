"""The mesh access policy and its compilation to nats-server authorization."""
