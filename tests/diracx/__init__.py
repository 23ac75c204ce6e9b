"""A real DiracX run as a separate process for the tests, and a test site playing the grid."""
