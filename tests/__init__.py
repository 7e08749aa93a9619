"""The test suite, laid out as the source: one folder per package area, e2e/ apart."""
