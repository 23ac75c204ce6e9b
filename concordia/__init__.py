"""Concordia: a science platform for containerised jobs on the grid."""

__version__ = "0.1.0"
