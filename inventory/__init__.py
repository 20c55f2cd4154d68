"""The domain model of SchoolFleet: schools, rooms, devices and their values."""
