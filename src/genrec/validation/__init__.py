"""Data validation with Great Expectations: suites, Data Docs, the gate and quarantine."""

import logging
import os

# Set before great_expectations is first imported: it logs at INFO while importing and on every save.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
logging.getLogger("great_expectations").setLevel(logging.WARNING)
