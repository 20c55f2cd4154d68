"""Lessons: the dispatcher that launches them on panels, how they ended, their figures."""
