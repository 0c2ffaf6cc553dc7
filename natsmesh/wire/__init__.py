"""The wire: subjects, headers, codec, errors, and the shapes that cross NATS or a file (pure)."""
