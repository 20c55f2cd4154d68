"""``schoolctl``: the command line for school IT staff."""
