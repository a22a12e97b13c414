"""The records: every answered study, the readers' verdicts, and the audit trail, in a real
database (SQLAlchemy 2, Alembic migrations; SQLite by default, PostgreSQL for replicas).

:mod:`.schema` (the tables), :mod:`.database` (URL, engine, migrations, health),
:mod:`.worklist` (recording, the prioritised list, reviews, deletion, export),
:mod:`.audit` (the append-only access log), :mod:`.practice` (model-vs-reader metrics).
"""
