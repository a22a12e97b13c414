"""``GET /worklist`` with 10,000 recorded studies, on SQLite and on PostgreSQL, same run.

Each database gets ``--studies`` synthetic records (two views each, a spread of
probabilities and results, a tenth of them reviewed), then the service is started on it
(in process, ASGI through the test client: routing, the query, the audit write and the JSON)
and timed on: the first page (50), a deep page (the cursor of the last page), the unread
filter, and one study (``GET /worklist/{id}``). Beside it, the in-process baseline: the
record store's own page query, without HTTP. Median of ``--repeats`` calls with a 95%
bootstrap interval. PostgreSQL is Debian's, started on loopback by the tests' harness.

    python -m bench.worklist_bench --studies 10000
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import write_result
from bench.figures import provenance
from bench.pacs_bench import median_interval
from service.adapters.records.database import Database
from service.adapters.records.worklist import RecordStore, StudyEntry, ViewEntry, utcnow

RESULT = Path("bench/results/worklist_bench.json")
HEADERS = {"X-API-Key": "bench-key"}


def populate(store: RecordStore, count: int, *, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    start = utcnow() - dt.timedelta(days=30)
    ids: list[str] = []
    for chunk in range(0, count, 1000):
        entries = []
        for _ in range(min(1000, count - chunk)):
            p = float(rng.beta(2, 5))
            result = "abnormal" if p >= 0.35 else "normal"
            view = ViewEntry(filename=f"{int(rng.integers(1 << 62)):064x}.png", probability=p)
            entries.append(
                StudyEntry(
                    source="api",
                    bundle_name="demo",
                    bundle_version="bench",
                    operating_point="triage",
                    body_part=str(rng.choice(["Elbow", "Hand", "Shoulder"])),
                    probability=p,
                    threshold=0.35,
                    result=result,
                    views=[view, view],
                )
            )
        ids += store.record_many(entries, now=start + dt.timedelta(minutes=chunk))
    for study_id in ids[::10]:  # a tenth reviewed
        store.review(study_id, "reader", "abnormal")
    return ids


def timed(call: Callable[[], Any], repeats: int) -> list[float]:
    call()  # warm-up
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return seconds


def measure(url: str, count: int, repeats: int, bundle: Path, work: Path) -> dict[str, Any]:
    from harness.service_support import running
    from service.settings import Settings

    database = Database(url)
    database.upgrade()
    store = RecordStore(database)
    started = time.perf_counter()
    ids = populate(store, count)
    filled = time.perf_counter() - started
    last_cursor = None
    cursor: str | None = None
    while True:  # walk to the last page once: its cursor is the deepest one
        page = store.page("all", 200, cursor)
        if page.next_cursor is None:
            break
        last_cursor, cursor = cursor, page.next_cursor
    figures: dict[str, Any] = {"fill_s": filled}
    figures["baseline_page_ms"] = [s * 1000 for s in timed(lambda: store.page("all", 50), repeats)]
    settings = Settings(
        models_dir=bundle.parent,
        bundle=str(bundle),
        upload_dir=work / "uploads",
        database_url=url,
        api_keys="bench:bench-key",
        log_level="warning",
    )
    with running(settings) as (client, _app):
        cases = {
            "first_page": "/worklist?limit=50",
            "deep_page": f"/worklist?limit=50&cursor={last_cursor}" if last_cursor else None,
            "unread_first_page": "/worklist?status=unread&limit=50",
            "one_study": f"/worklist/{ids[count // 2]}",
        }
        for name, path in cases.items():
            if path is None:
                continue

            def call(path: str = path) -> None:
                response = client.get(path, headers=HEADERS)
                assert response.status_code == 200, response.text

            figures[f"{name}_ms"] = [s * 1000 for s in timed(call, repeats)]
    database.dispose()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--bundle", type=Path, help="bundle to serve (default: a random-init one)")
    args = parser.parse_args(argv)

    from harness.bundles import make_untrained_bundle
    from harness.postgres_support import postgres_missing_reason, start_postgres

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bonexr-worklist-bench-") as tmp:
        work = Path(tmp)
        bundle = args.bundle or make_untrained_bundle(work / "models" / "tiny", input_size=64)
        results["sqlite"] = measure(
            f"sqlite:///{work / 'records.db'}", args.studies, args.repeats, bundle, work / "s"
        )
        reason = postgres_missing_reason()
        if reason is None:
            server = start_postgres(work / "pg")
            try:
                url = server.create_database("bench")
                results["postgresql"] = measure(url, args.studies, args.repeats, bundle, work / "p")
            finally:
                server.stop()
        else:
            print(f"PostgreSQL skipped: {reason}")

    print(f"\nGET /worklist with {args.studies:,} recorded studies (median ms [95% CI], "
          f"{args.repeats} calls)")  # fmt: skip
    summary: dict[str, Any] = {}
    for backend, figures in results.items():
        print(f"  {backend} (filled in {figures['fill_s']:.1f} s)")
        summary[backend] = {"fill_s": figures["fill_s"]}
        for name, values in figures.items():
            if not name.endswith("_ms"):
                continue
            median, low, high = median_interval(values)
            summary[backend][name] = {"median": median, "ci95": [low, high]}
            print(f"    {name[:-3]:<20} {median:8.2f} [{low:.2f}, {high:.2f}]")
    write_result(
        RESULT,
        {
            **provenance(),
            "command": f"python -m bench.worklist_bench --studies {args.studies} "
            f"--repeats {args.repeats}",
            "studies": args.studies,
            "results": summary,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
