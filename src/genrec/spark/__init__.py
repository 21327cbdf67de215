"""PySpark jobs of the library. Their spark-submit entry points live in the top-level spark_jobs/ package."""
