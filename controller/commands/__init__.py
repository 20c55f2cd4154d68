"""``schoolfleet-controller``'s subcommands beyond ``serve``."""
