"""Infrastructure: the inference engine and its runtimes, the upload stores, the records
database, the Prometheus metrics.

Adapters know the domain's values and errors and nothing above them: no use case, no door.
"""
