"""The two ways results go back to a PACS: STOW-RS (``dicomweb-client``) and C-STORE
(``pynetdicom``). Each is one blocking call with a timeout that raises
:class:`~service.doors.dicom.outbox.DeliveryError` saying whether trying again can help; the
retries themselves are the outbox's (the client libraries' own are turned off, so a down
PACS never holds the delivery loop).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from service.doors.dicom.outbox import DeliveryError, Destination
from service.settings import Settings, parse_dicom_address

#: STOW-RS statuses that would come back the same however often the objects are sent.
PERMANENT_HTTP = frozenset({400, 409, 413, 415})
#: C-STORE success and warning statuses (PS3.4 B.2.3): the object is stored.
STORED = frozenset({0x0000, 0x0001, 0xB000, 0xB006, 0xB007})


def dicomweb_destination(
    url: str, timeout: float, credentials: tuple[str, str] | None = None
) -> Destination:
    """STOW-RS to ``url`` (a DICOMweb base such as ``http://pacs:8042/dicom-web``), with
    HTTP basic authentication when ``credentials`` (user, password) are given."""

    def send(paths: Sequence[Path]) -> None:
        import pydicom
        import requests
        from dicomweb_client.api import DICOMwebClient

        session = requests.Session()
        if credentials is not None:
            session.auth = credentials
        client = DICOMwebClient(url=url, session=session, timeout=(min(10.0, timeout), timeout))
        client.set_http_retry_params(retry=False)
        datasets = [pydicom.dcmread(path) for path in paths]
        try:
            answer = client.store_instances(datasets)
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            raise DeliveryError(
                f"STOW-RS answered HTTP {status}", permanent=status in PERMANENT_HTTP
            ) from None
        except requests.RequestException as exc:
            raise DeliveryError(f"STOW-RS unreachable ({type(exc).__name__})") from None
        check_stow_answer(answer, [str(ds.SOPInstanceUID) for ds in datasets])

    return Destination("dicomweb", f"STOW-RS {without_credentials(url)}", send)


def without_credentials(url: str) -> str:
    """``url`` as it may be shown (``/ready``, logs, metrics): a ``user:password@`` in it
    becomes ``***@`` (the secret is used to send, never displayed)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"***@{host}"))


def check_stow_answer(answer: Any, sent: Sequence[str]) -> None:
    """A STOW-RS answer counts as delivered only when it references every SOP Instance UID
    sent: "no failure listed" is not success (a PACS answered 200 with both sequences empty
    and stored nothing). A failure listed is tried again (it may say "out of resources"); a
    UID silently missing is permanent (the same objects meet the same answer), and the job
    goes to the failed folder that ``/ready`` and ``/metrics`` count."""
    failed = answer.get("FailedSOPSequence") if answer is not None else None
    if failed:
        raise DeliveryError(f"STOW-RS refused {len(failed)} of {len(sent)} object(s)")
    items = (answer.get("ReferencedSOPSequence") if answer is not None else None) or []
    referenced = {str(i.ReferencedSOPInstanceUID) for i in items if "ReferencedSOPInstanceUID" in i}
    missing = [uid for uid in sent if uid not in referenced]
    if missing:
        raise DeliveryError(
            f"STOW-RS answered without storing {len(missing)} of {len(sent)} object(s): "
            "they are not in its ReferencedSOPSequence and no failure was listed",
            permanent=True,
        )


def dicom_destination(address: str, calling_aet: str, timeout: float) -> Destination:
    """C-STORE to ``address`` (``AE@host:port``), as ``calling_aet``."""
    called, host, port = parse_dicom_address(address)

    def send(paths: Sequence[Path]) -> None:
        import pydicom
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
        from pynetdicom import AE

        datasets = [pydicom.dcmread(path) for path in paths]
        ae = AE(ae_title=calling_aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
        ae.connection_timeout = min(10.0, timeout)
        for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
            ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        association = ae.associate(host, port, ae_title=called)
        if not association.is_established:
            why = "rejected" if association.is_rejected else "not established"
            raise DeliveryError(f"C-STORE association with {called}@{host}:{port} {why}")
        try:
            for dataset in datasets:
                status = association.send_c_store(dataset)
                code = int(getattr(status, "Status", -1)) if status else -1
                if code in STORED:
                    continue
                if code == -1:
                    raise DeliveryError("C-STORE got no answer (timeout or aborted)")
                raise DeliveryError(
                    f"C-STORE status 0x{code:04X}", permanent=not 0xA700 <= code <= 0xA7FF
                )
        finally:
            association.release()

    return Destination("dicom", f"C-STORE {called}@{host}:{port}", send)


def configured_destinations(settings: Settings) -> list[Destination]:
    """The result destinations the settings name (none: results are not sent)."""
    found = []
    if settings.results_dicomweb_url:
        found.append(
            dicomweb_destination(
                settings.results_dicomweb_url,
                settings.delivery_timeout_s,
                settings.dicomweb_credentials(),
            )
        )
    if settings.results_dicom:
        found.append(
            dicom_destination(
                settings.results_dicom, settings.dicom_ae_title, settings.delivery_timeout_s
            )
        )
    return found
