"""Mutation testing of the modules that decide (`make mutation`); see docs/mutation.md."""
