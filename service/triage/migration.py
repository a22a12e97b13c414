"""Bringing the records database to the current schema, from the app's lifespan and /ready.

At start-up the migrations run once; a database that is down then is logged (the service
still starts: probes, metrics and the DICOM listener work) and ``/ready`` tries again on each
probe, naming the database until it works.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.exc import SQLAlchemyError

from service.domain.errors import RecordsUnavailableError
from service.triage.services import Services

log = logging.getLogger("bonexr.records")


async def migrate(services: Services) -> bool:
    """Bring the records database to the current schema (at start-up; again from /ready
    while it has not worked). A database that is down is logged and named by /ready."""
    if services.records_migrated:
        return True
    try:
        await asyncio.to_thread(services.database.upgrade)
    except (RecordsUnavailableError, SQLAlchemyError, OSError) as exc:
        log.error(
            "records database %s cannot be migrated (%s): /ready reports it",
            services.database.label,
            type(exc).__name__,
        )
        return False
    services.records_migrated = True
    return True
