"""A loopback INDIGO IAM test double and a test CA, shared by the test suites."""
