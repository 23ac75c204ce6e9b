"""Fakes of Concordia's own interfaces, for testing its rules fast."""
