"""The DICOM Storage SCP: a modality or PACS sends instances by C-STORE (``pynetdicom``).

Enabled by ``BONEXR_DICOM_PORT``; the node's AE title is ``BONEXR_DICOM_AE_TITLE``. With
``BONEXR_DICOM_ALLOWED_AETS`` set, an association from any other calling AE title is
rejected at A-ASSOCIATE (pynetdicom's ``require_calling_aet``), before any data is sent.
It accepts every storage SOP class pynetdicom offers (so a CT slice in a study is taken,
and then recorded as not eligible) and C-ECHO, in the uncompressed transfer syntaxes and
every compressed one the installed pydicom decoders read (:func:`accepted_transfer_syntaxes`:
JPEG, JPEG-LS, JPEG 2000, RLE), so a modality that sends JPEG is not refused over C-STORE
while STOW-RS takes the same file. Each C-STORE runs in pynetdicom's thread for
that association, and is answered with the status :func:`receive` returns.

Bounded like STOW-RS: an instance larger than ``max_bytes`` (``BONEXR_MAX_UPLOAD_BYTES``)
is refused with 0xA700 before it is read, decoded or stored. pynetdicom writes each
received dataset to a temporary file as it arrives (``STORE_RECV_CHUNKED_DATASET``), so an
oversized instance costs disk while it streams, never memory (four 400 MiB objects took
the server from 159 to 3,234 MiB when it buffered them), and a peer
that opens a connection and sends nothing loses its association slot after
:data:`ACSE_TIMEOUT_S` (pynetdicom's default, 30 s, let ten idle sockets block every
association).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from ipaddress import IPv4Network, IPv6Network, ip_address
from typing import Any

log = logging.getLogger("bonexr.dicom")

#: Seconds a peer may hold a connection before its A-ASSOCIATE request, and between PDUs.
ACSE_TIMEOUT_S = 5.0
NETWORK_TIMEOUT_S = 30.0
#: C-STORE status for an instance over the size limit (out of resources).
TOO_LARGE = 0xA700

#: Called with (the instance as a Part 10 file, calling AE title); returns the C-STORE status.
Receive = Callable[[bytes, str], int]


class StorageScp:
    """One listening AE; :meth:`start` and :meth:`stop` from the app's lifespan."""

    def __init__(
        self,
        *,
        ae_title: str,
        host: str,
        port: int,
        allowed_aets: list[str],
        receive: Receive,
        allowed_networks: Sequence[IPv4Network | IPv6Network] = (),
        max_bytes: int = 20 * 1024 * 1024,
        max_pdu: int = 65536,
    ) -> None:
        self.ae_title = ae_title
        self.host = host
        self.port = port
        self.allowed_aets = allowed_aets
        self.allowed_networks = list(allowed_networks)
        self.receive = receive
        self.max_bytes = max_bytes
        self.max_pdu = max_pdu
        self._server: Any = None
        self.problem: str | None = "not started"

    @property
    def address(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"

    @property
    def listening(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        from pynetdicom import AE, StoragePresentationContexts, _config, build_context, evt
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

        # Received datasets go to a temporary file as they arrive, not into memory (a
        # process-wide pynetdicom switch: the node is this process's only Storage SCP).
        _config.STORE_RECV_CHUNKED_DATASET = True
        ae = AE(ae_title=self.ae_title)
        ae.acse_timeout = ACSE_TIMEOUT_S
        ae.network_timeout = NETWORK_TIMEOUT_S
        syntaxes = accepted_transfer_syntaxes()
        ae.supported_contexts = [
            build_context(str(context.abstract_syntax), syntaxes)
            for context in StoragePresentationContexts
        ]
        ae.add_supported_context(Verification)
        ae.maximum_pdu_size = self.max_pdu
        if self.allowed_aets:
            ae.require_calling_aet = self.allowed_aets
        try:
            self._server = ae.start_server(
                (self.host, self.port),
                block=False,
                evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
            )
        except OSError as exc:
            self.problem = f"DICOM listener {self.address} could not start ({exc.strerror})"
            log.error("%s", self.problem)
            return
        if self.allowed_networks:  # checked at accept(), before a thread or a slot
            self._server.verify_request = self._from_allowed_network
        self.problem = None
        log.info("DICOM Storage SCP listening as %s", self.address)

    def _from_allowed_network(self, request: Any, client_address: Any) -> bool:
        """socketserver's hook, before the connection gets a thread: only the networks of
        ``BONEXR_DICOM_ALLOWED_HOSTS`` (10 idle sockets from anywhere blocked every
        association for ~30 s; now they are closed at once)."""
        try:
            address = ip_address(str(client_address[0]).split("%")[0])
        except ValueError:
            return False
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        allowed = any(address in network for network in self.allowed_networks)
        if not allowed:
            log.warning("DICOM connection from %s closed: not in the allowed hosts", address)
        return allowed

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
            self.problem = "stopped"

    def _on_store(self, event: Any) -> int:
        calling = str(event.assoc.requestor.ae_title).strip()
        try:
            path = event.dataset_path  # the received file (chunked receiving)
            size = path.stat().st_size
            if size > self.max_bytes:
                log.warning("C-STORE from %s refused: %d bytes over the limit", calling, size)
                return TOO_LARGE
            data = path.read_bytes()
        except (AttributeError, OSError) as exc:  # nothing readable: refuse, never crash
            log.warning("C-STORE from %s unreadable (%s)", calling, type(exc).__name__)
            return 0xC000
        return self.receive(data, calling)


#: The compressed transfer syntaxes offered when a decoder for them is installed.
COMPRESSED = (
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline (8 bit)
    "1.2.840.10008.1.2.4.51",  # JPEG Extended (12 bit)
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless, first-order prediction (the common one)
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE Lossless
)


def accepted_transfer_syntaxes() -> list[str]:
    """pynetdicom's uncompressed syntaxes, then each compressed one whose pydicom decoder is
    installed (the pylibjpeg plugins of the ``dicom`` extra): offering one that could not
    be decoded would turn an association's success into an unreadable instance."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID
    from pynetdicom import DEFAULT_TRANSFER_SYNTAXES

    decodable = []
    for syntax in COMPRESSED:
        try:
            if get_decoder(UID(syntax)).is_available:
                decodable.append(syntax)
        except NotImplementedError:
            continue
    return [*DEFAULT_TRANSFER_SYNTAXES, *decodable]
