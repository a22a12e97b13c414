"""End to end beside a real PACS: from Orthanc's C-STORE of a two-view study to bonexr's
report appearing in that study in Orthanc.

Runs Debian's Orthanc on loopback (the tests' harness) and ``bonexr serve`` with the DICOM
node on, results back over STOW-RS; sends ``--studies`` fresh synthetic two-view elbow
studies one after another (``/modalities/bonexr/store``, synchronous) and polls QIDO-RS
every 50 ms until the report is there. The settle time is part of the figure by design
(the node cannot know a study is complete before it); the table also gives the time
beyond it. Median with a 95% bootstrap interval over the studies. Saves one heat-map
secondary capture as ``docs/dicom-capture.png``: what a viewer shows beside the originals.

    python -m bench.pacs_bench --bundle models/demo --studies 10 --settle 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.common import write_result
from bench.figures import provenance
from harness.dicom_node_support import Bonexr, Study, radiograph, running
from harness.orthanc_support import orthanc_missing_reason, start_orthanc, stop_all
from service.doors.dicom.results import RESULTS_SERIES_DESCRIPTION

RESULT = Path("bench/results/pacs_bench.json")
CAPTURE_PNG = Path("docs/dicom-capture.png")


def median_interval(values: list[float], *, seed: int = 0) -> tuple[float, float, float]:
    """Median and its 95% percentile-bootstrap interval (B = 2000)."""
    data = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(data, size=(2000, data.size), replace=True), axis=1)
    low, high = np.percentile(medians, [2.5, 97.5])
    return float(np.median(data)), float(low), float(high)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=Path("models/demo"))
    parser.add_argument("--studies", type=int, default=10)
    parser.add_argument("--settle", type=float, default=2.0, help="BONEXR_STUDY_SETTLE_S")
    args = parser.parse_args(argv)
    reason = orthanc_missing_reason()
    if reason:
        parser.error(reason)
    bundle = args.bundle.resolve()
    if not (bundle / "manifest.json").is_file():
        parser.error(f"no bundle at {bundle} (make demo)")

    from training.synthetic import generate_synthetic_mura

    with tempfile.TemporaryDirectory(prefix="bonexr-pacs-bench-") as tmp:
        work = Path(tmp)
        data = work / "MURA-v1.1"
        generate_synthetic_mura(
            data, patients_per_part=args.studies, body_parts=("ELBOW",), seed=2028, progress=False
        )
        studies = sorted(p for p in (data / "valid" / "XR_ELBOW").glob("*/*") if p.is_dir())
        studies += sorted(p for p in (data / "train" / "XR_ELBOW").glob("*/*") if p.is_dir())
        views = [sorted(s.glob("*.png"))[:2] for s in studies]
        views = [v for v in views if len(v) == 2][: args.studies]

        bonexr = Bonexr(
            bundle.parent,
            work / "bonexr",
            BONEXR_BUNDLE=str(bundle),
            BONEXR_STUDY_SETTLE_S=str(args.settle),
            BONEXR_ELIGIBILITY="enforce",
            BONEXR_LOG_LEVEL="warning",
        )
        orthanc = start_orthanc(work / "orthanc")
        bonexr.env["BONEXR_RESULTS_DICOMWEB_URL"] = orthanc.dicomweb
        seconds: list[float] = []
        try:
            with running(bonexr):
                orthanc.set_modality("bonexr", "BONEXR", "127.0.0.1", bonexr.dicom_port)
                for number, pair in enumerate(views):
                    seconds.append(_one_study(orthanc, bonexr, pair, save=number == 0))
                    print(f"study {number + 1}: report in Orthanc after {seconds[-1]:.2f} s")
        finally:
            bonexr.stop()
            stop_all(orthanc)

    _report(args, bundle, seconds)
    return 0


def _one_study(orthanc: Any, bonexr: Bonexr, pair: list[Path], *, save: bool) -> float:
    """C-STORE a two-view study from Orthanc to bonexr; seconds until its report is back."""
    study = Study()
    for index, path in enumerate(pair):
        study.add(radiograph(path), photometric="MONOCHROME1" if index else "MONOCHROME2")
    ids = [orthanc.upload(d) for d in study.instances.values()]
    started = time.monotonic()
    orthanc.send_to_modality("bonexr", ids)
    while not _report_in(orthanc, study.study_uid):
        if time.monotonic() - started > 120:
            raise SystemExit(f"no report after 120 s\n{bonexr.log_tail()}")
        time.sleep(0.05)
    elapsed = time.monotonic() - started
    if save:
        _save_capture(orthanc, study.study_uid)
    return elapsed


def _report(args: argparse.Namespace, bundle: Path, seconds: list[float]) -> None:
    median, low, high = median_interval(seconds)
    beyond = [s - args.settle for s in seconds]
    b_median, b_low, b_high = median_interval(beyond)
    print(
        f"\nC-STORE of a two-view study -> report in the PACS ({len(seconds)} studies, "
        f"settle {args.settle:g} s): median {median:.2f} s [{low:.2f}, {high:.2f}]; "
        f"beyond the settle time {b_median:.2f} s [{b_low:.2f}, {b_high:.2f}]"
    )
    write_result(
        RESULT,
        {
            **provenance(),
            "command": f"python -m bench.pacs_bench --bundle {args.bundle} --studies "
            f"{args.studies} --settle {args.settle:g}",
            "bundle": bundle.name,
            "settle_s": args.settle,
            "seconds": seconds,
            "median_s": median,
            "median_ci95_s": [low, high],
            "beyond_settle_median_s": b_median,
            "beyond_settle_ci95_s": [b_low, b_high],
            "mean_s": statistics.fmean(seconds),
        },
    )


def _report_in(orthanc, study_uid: str) -> bool:  # type: ignore[no-untyped-def]
    return any(
        i.get("SeriesDescription") == RESULTS_SERIES_DESCRIPTION and i.get("Modality") == "SR"
        for i in orthanc.study_instances(study_uid)
    )


def _save_capture(orthanc, study_uid: str) -> None:  # type: ignore[no-untyped-def]
    """The first heat-map capture of the study, as a viewer would show it, scaled down."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        captures = [
            i
            for i in orthanc.study_instances(study_uid)
            if i.get("SeriesDescription") == RESULTS_SERIES_DESCRIPTION and i["Modality"] != "SR"
        ]
        if captures:
            item = captures[0]
            dataset = orthanc.retrieve_instance(
                study_uid, item["SeriesInstanceUID"], item["SOPInstanceUID"]
            )
            picture = Image.fromarray(dataset.pixel_array)
            picture.thumbnail((512, 512))
            CAPTURE_PNG.parent.mkdir(parents=True, exist_ok=True)
            picture.save(CAPTURE_PNG, optimize=True)
            print(f"wrote {CAPTURE_PNG}")
            return
        time.sleep(0.1)


if __name__ == "__main__":
    raise SystemExit(main())
