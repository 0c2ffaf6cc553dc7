"""The ``natsmesh`` command line."""
