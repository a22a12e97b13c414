"""The doors into triage: the HTTP API and page, the DICOM node, ``bonexr predict``, the CLI.

Each door only translates: its input into the use cases' calls, and their answers and
errors into its own form (a status and JSON, a CSV row and exit code, a DICOM status or
report text), each in one table.
"""
