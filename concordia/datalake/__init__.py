"""The data lake: Rucio, reached over its REST API and its storage's own protocols."""
