"""Studies being received: grouped by StudyInstanceUID, kept on disk, analysed once settled.

A PACS sends a study one instance at a time, over one association or several, by C-STORE or
STOW-RS. The node cannot know when the last one came, so a study is analysed once no new
instance has arrived for ``BONEXR_STUDY_SETTLE_S``. Each study's record
(``studies/<hash>.json``: its instances, when the last arrived, which answers were made) is
rewritten atomically on every change, so a restart loses nothing: unanalysed studies settle
again and are answered.

An answer is identified by its **report key**: the study, the exact set of its instances,
the bundle version and the study's revision. Re-sending the same instances gives the same
key, so no second report; a study that gains an instance (or a new model version) gets a
new one, and so does one whose instance comes again with other content under the same SOP
Instance UID (the revision counts such replacements). A new answer supersedes the last:
its report references the earlier one and its worklist record replaces the earlier record
(``record_id``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bonexr.atomic import write_json_atomic
from service.doors.dicom.instances import ReceivedInstance

log = logging.getLogger("bonexr.dicom")


class PatientConflict(ValueError):
    """An instance of another patient than the study's (one report never mixes two)."""


def study_key(study_uid: str) -> str:
    """A file-system-safe name for a study that reveals nothing of its UID (logs, files)."""
    return hashlib.sha256(study_uid.encode()).hexdigest()[:24]


def report_key(study_uid: str, sop_uids: list[str], model_version: str, revision: int = 0) -> str:
    """The identity of one answer: this study, exactly these instances, this bundle, this
    revision of their content (0, the first, leaves the key as it always was)."""
    revised = [f"revision {revision}"] if revision else []
    text = "\n".join([study_uid, model_version, *sorted(sop_uids), *revised])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass
class StudyRecord:
    """One study's instances (by SOP Instance UID) and its analysis state."""

    study_uid: str
    instances: dict[str, ReceivedInstance] = field(default_factory=dict)
    #: wall-clock time of the last new instance (survives a restart)
    last_arrival: float = 0.0
    #: report keys already answered (see the module docstring)
    analysed: list[str] = field(default_factory=list)
    #: do not try before this wall-clock time (the service was not ready, say)
    retry_after: float = 0.0
    attempts: int = 0
    #: how often an instance came again with other content under its SOP Instance UID
    revision: int = 0
    #: the worklist record of the last answer (the next one replaces it)
    record_id: str | None = None

    @property
    def key(self) -> str:
        return study_key(self.study_uid)

    def report_key(self, model_version: str) -> str:
        return report_key(self.study_uid, list(self.instances), model_version, self.revision)

    @property
    def last_report_key(self) -> str | None:
        """The report key of the last answer made (its report is the predecessor)."""
        return self.analysed[-1] if self.analysed else None

    def to_json(self) -> dict[str, Any]:
        return {
            "study_uid": self.study_uid,
            "instances": [i.to_json() for i in self.instances.values()],
            "last_arrival": self.last_arrival,
            "analysed": self.analysed,
            "retry_after": self.retry_after,
            "attempts": self.attempts,
            "revision": self.revision,
            "record_id": self.record_id,
        }

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> StudyRecord:
        instances = [ReceivedInstance.from_json(i) for i in payload.get("instances", [])]
        return cls(
            study_uid=str(payload["study_uid"]),
            instances={i.sop_uid: i for i in instances},
            last_arrival=float(payload.get("last_arrival", 0.0)),
            analysed=[str(k) for k in payload.get("analysed", [])],
            retry_after=float(payload.get("retry_after", 0.0)),
            attempts=int(payload.get("attempts", 0)),
            revision=int(payload.get("revision", 0)),
            record_id=payload.get("record_id"),
        )


class StudyInbox:
    """Every study the node is receiving or has answered (thread-safe: the SCP's threads
    add instances while the event loop settles and analyses)."""

    def __init__(self, root: Path, settle_s: float) -> None:
        self.folder = root / "studies"
        self.settle_s = settle_s
        self._lock = threading.Lock()
        self._records: dict[str, StudyRecord] = {}

    def load(self) -> int:
        """Read every study record (at start-up); returns how many were read."""
        self.folder.mkdir(parents=True, exist_ok=True)
        loaded = 0
        with self._lock:
            for path in sorted(self.folder.glob("*.json")):
                try:
                    record = StudyRecord.from_json(json.loads(path.read_text()))
                except (OSError, ValueError, KeyError, TypeError):
                    log.warning("unreadable study record %s skipped", path.name)
                    continue
                self._records[record.key] = record
                loaded += 1
        return loaded

    def add(self, instance: ReceivedInstance, *, now: float | None = None) -> bool:
        """Record ``instance`` in its study; True when it is new or its content changed (a
        re-sent identical instance only keeps the study from settling).

        Checked and saved under the lock, the record on disk first: :class:`PatientConflict`
        when the study holds another patient's instances (two arriving at once cannot both
        pass), and an OSError (a full disk) when the record cannot be saved; either way the
        study is left as it was, so an instance the sender was told failed is never
        analysed later."""
        now = time.time() if now is None else now
        key = study_key(instance.study_uid)
        with self._lock:
            current = self._records.get(key)
            record = (
                dataclasses.replace(
                    current, instances=dict(current.instances), analysed=list(current.analysed)
                )
                if current is not None
                else StudyRecord(instance.study_uid)
            )
            holder = next((i.patient for i in record.instances.values() if i.patient), None)
            if holder is not None and instance.patient is not None and holder != instance.patient:
                raise PatientConflict(
                    "the study already holds instances of another patient (PatientID "
                    "differs): not taken, so that one report never mixes two patients"
                )
            earlier = record.instances.get(instance.sop_uid)
            new = earlier is None
            if earlier is not None and earlier.dicom_sha256 != instance.dicom_sha256:
                record.revision += 1  # other content, same UID: analysed again
                new = True
                log.info("study %s: an instance came again with new content", key[:12])
            record.instances[instance.sop_uid] = instance
            record.last_arrival = now
            record.attempts = 0
            record.retry_after = 0.0
            self._save(record)  # an OSError (disk full) leaves the study as it was
            self._records[key] = record
        return new

    def due(self, model_version: str, *, now: float | None = None) -> list[StudyRecord]:
        """Studies settled and not yet answered for these instances and this bundle (copies:
        instances arriving meanwhile change the study, not the copy being analysed)."""
        now = time.time() if now is None else now
        with self._lock:
            return [
                dataclasses.replace(
                    record, instances=dict(record.instances), analysed=list(record.analysed)
                )
                for record in self._records.values()
                if now - record.last_arrival >= self.settle_s
                and now >= record.retry_after
                and record.report_key(model_version) not in record.analysed
            ]

    def waiting(self, model_version: str) -> int:
        """Studies received and not answered yet (settling or due)."""
        with self._lock:
            return sum(
                r.report_key(model_version) not in r.analysed for r in self._records.values()
            )

    def mark_answered(self, record: StudyRecord, key: str, record_id: str | None) -> None:
        """``key`` answered and recorded as ``record_id`` (what the next answer replaces)."""
        with self._lock:
            current = self._records.get(record.key)
            if current is None:
                return
            if key not in current.analysed:
                current.analysed.append(key)
            current.record_id = record_id or current.record_id
            current.attempts = 0
            current.retry_after = 0.0
            self._save(current)

    def defer(self, record: StudyRecord, seconds: float, *, now: float | None = None) -> None:
        """Try this study again in ``seconds`` (the predictor could not answer now)."""
        now = time.time() if now is None else now
        with self._lock:
            current = self._records.get(record.key)
            if current is None:
                return
            current.attempts += 1
            current.retry_after = now + seconds
            self._save(current)

    def forget_instances(self, sop_uids: set[str]) -> list[ReceivedInstance]:
        """Remove these instances from their studies (a study left empty is removed);
        returns what was removed, so the caller deletes the files (a record deleted from
        the worklist takes its source instances with it)."""
        removed: list[ReceivedInstance] = []
        with self._lock:
            for key, record in list(self._records.items()):
                gone = [uid for uid in record.instances if uid in sop_uids]
                if not gone:
                    continue
                removed += [record.instances.pop(uid) for uid in gone]
                if record.instances:
                    self._save(record)
                else:
                    del self._records[key]
                    (self.folder / f"{key}.json").unlink(missing_ok=True)
        return removed

    def kept_digests(self) -> set[str]:
        """The sha256 of every instance any study still holds."""
        with self._lock:
            return {i.dicom_sha256 for r in self._records.values() for i in r.instances.values()}

    def patient_of(self, study_uid: str) -> str | None:
        """The patient digest of the study's instances so far (None: none known yet)."""
        with self._lock:
            record = self._records.get(study_key(study_uid))
            if record is None:
                return None
            return next((i.patient for i in record.instances.values() if i.patient), None)

    def get(self, study_uid: str) -> StudyRecord | None:
        with self._lock:
            return self._records.get(study_key(study_uid))

    def forget_older_than(self, cutoff: float) -> int:
        """Drop records whose last instance came before ``cutoff`` (retention)."""
        with self._lock:
            old = [k for k, r in self._records.items() if r.last_arrival < cutoff]
            for key in old:
                del self._records[key]
                (self.folder / f"{key}.json").unlink(missing_ok=True)
        return len(old)

    def _save(self, record: StudyRecord) -> None:
        write_json_atomic(self.folder / f"{record.key}.json", record.to_json())
