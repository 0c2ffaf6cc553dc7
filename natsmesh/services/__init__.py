"""Declaring and running services: ``@service``, the runtime, serving processes."""
