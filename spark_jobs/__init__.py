"""PySpark jobs. Each runs with spark-submit (`spark-submit spark_jobs/<job>.py --help`) and from Python."""
