"""Compute backends behind one protocol: local (this machine) and DiracX."""
