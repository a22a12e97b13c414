"""Benchmark: the server's memory through the DICOM intake cases of the adversarial probe.

A real ``bonexr serve`` (uvicorn, the DICOM node's Storage SCP on) with a random-init
bundle; its RSS is sampled every 10 ms (psutil) while

1. four peers send a 400 MiB instance each by C-STORE at once (the limit is 20 MiB: each
   is refused with 0xA700; the probe saw 159 -> 3,234 MiB when pynetdicom buffered them);
2. one STOW-RS request of a million tiny parts (about 43 MiB of body) arrives (refused at
   the 1,001st part; the probe saw 365 -> 1,411 MiB).

The target (issue 37) is a server under 1 GiB through each. Memory, not time: the numbers
hold on a busy machine.

    python -m bench.intake_memory       # prints; writes bench/results/intake_memory.json
"""

from __future__ import annotations

import argparse
import concurrent.futures
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

from bench.common import write_result
from harness.bundles import make_untrained_bundle
from harness.service_support import free_port, server_process

MIB = 2**20


class Peak:
    """The peak RSS of a process while the ``with`` block runs."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.start = self.peak = int(self.process.memory_info().rss)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, int(self.process.memory_info().rss))
            time.sleep(0.01)

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, float]:
        return {"start_mib": round(self.start / MIB), "peak_mib": round(self.peak / MIB)}


def _huge_instance(path: Path, megabytes: int) -> None:
    """A Secondary Capture whose pixel data is ``megabytes`` MiB, written as a file (sent
    from disk in chunks, so the sender's memory stays small)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\x00" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = (
        SecondaryCaptureImageStorage,
        meta.MediaStorageSOPInstanceUID,
    )
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.Modality = "BENCH", "OT"
    side = int((megabytes * MIB) ** 0.5)
    ds.Rows = ds.Columns = side
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.zeros((side, side), np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)


def _c_store(port: int, path: Path) -> int:
    from pydicom.uid import ExplicitVRLittleEndian
    from pynetdicom import AE, _config
    from pynetdicom.sop_class import SecondaryCaptureImageStorage  # type: ignore[attr-defined]

    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title="BENCH")
    ae.add_requested_context(SecondaryCaptureImageStorage, ExplicitVRLittleEndian)
    association = ae.associate("127.0.0.1", port, ae_title="BONEXR")
    if not association.is_established:
        return -1
    try:
        status = association.send_c_store(path)
        return int(status.Status) if status else -1
    finally:
        association.release()


def c_store_case(pid: int, port: int, work: Path, megabytes: int, peers: int) -> dict:
    path = work / "huge.dcm"
    _huge_instance(path, megabytes)
    with Peak(pid) as peak, concurrent.futures.ThreadPoolExecutor(peers) as pool:
        statuses = list(pool.map(lambda _: _c_store(port, path), range(peers)))
    path.unlink()
    return {
        "case": f"{peers} x {megabytes} MiB by C-STORE at once",
        "statuses": [f"0x{s:04X}" if s >= 0 else "none" for s in statuses],
        **peak.summary(),
    }


def stow_case(pid: int, url: str, parts: int) -> dict:
    boundary = "benchboundary"
    part = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\nx\r\n".encode()
    body = part * parts + f"--{boundary}--\r\n".encode()
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    with Peak(pid) as peak:
        answer = httpx.post(
            f"{url}/dicom-web/studies",
            content=body,
            headers={"content-type": content_type},
            timeout=300,
        )
    return {
        "case": f"one STOW-RS request of {parts:,} tiny parts ({len(body) / MIB:.0f} MiB)",
        "status": answer.status_code,
        **peak.summary(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--megabytes", type=int, default=400, help="size of each C-STORE object")
    parser.add_argument("--peers", type=int, default=4)
    parser.add_argument("--parts", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=Path("bench/results/intake_memory.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        make_untrained_bundle(work / "models" / "tiny")
        port = free_port()
        with server_process(work / "models", work / "uploads", BONEXR_DICOM_PORT=str(port)) as (
            url,
            process,
        ):
            cases = [
                c_store_case(process.pid, port, work, args.megabytes, args.peers),
                stow_case(process.pid, url, args.parts),
            ]
    for case in cases:
        print(case)
    write_result(args.out, {"cases": cases, "target": "server RSS under 1,024 MiB in each"})


if __name__ == "__main__":
    main()
