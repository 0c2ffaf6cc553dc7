"""The control plane: the controller, its registry, ejections and status."""
