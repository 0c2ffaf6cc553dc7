"""The chaos suite (issue 14): real NATS clusters, superclusters and leaf nodes under faults."""
