"""Data validation with Great Expectations: suites, Data Docs, the gate and quarantine."""
