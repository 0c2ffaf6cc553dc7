"""The caller's side: the ``Mesh`` client, its attempt loop and its copy of the tables."""
