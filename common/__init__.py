"""Small pieces every SchoolFleet program shares: typed settings and logging."""
