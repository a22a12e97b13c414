"""The DICOM node: receives studies from a PACS (STOW-RS, C-STORE), answers them through
the predictor once they settle, and sends the results back into the same study as DICOM
objects (a TID 1500 structured report and heat-map secondary captures), durably.

One job per module: :mod:`.instances` (read, check and store one received instance),
:mod:`.inbox` (studies being received, on disk, and when each has settled),
:mod:`.analysis` (a settled study -> the predictor's answer -> result objects),
:mod:`.results` (the SR and secondary captures, built with highdicom),
:mod:`.outbox` (results waiting for delivery, retried with backoff),
:mod:`.destinations` (STOW-RS and C-STORE senders), :mod:`.scp` (the Storage SCP),
:mod:`.stow` (parsing a STOW-RS request body) and :mod:`.node` (wiring and loops).
"""
