"""Examples of natsmesh: each one runs, and each one is executed by a test."""
