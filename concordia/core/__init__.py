"""Pure domain: models, the DIRAC job state machine, JDL, parameters. No I/O."""
