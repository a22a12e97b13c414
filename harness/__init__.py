"""Shared harness for the tests and the benchmarks: a running app, untrained bundles, a
real PostgreSQL, a real Orthanc, a running ``bonexr serve`` with its DICOM node.

Why its own package: ``bench/`` must not import from ``tests/`` (an arrow back up), yet
both need the same real components started the same way. Not shipped in the wheel.
"""
