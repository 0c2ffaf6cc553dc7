"""``natsmesh bench``: every benchmark against its baseline in one run."""
