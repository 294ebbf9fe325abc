"""Locust load tests, the load-test report and the soak run (``python -m loadtests``)."""
