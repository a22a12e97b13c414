"""The triage domain: answers, refusals and errors, the answer rules, the eligibility
policy and the intake; no web, no runtime, no storage.

Everything a door says about an image is decided here (:mod:`.rules`, :mod:`.policy`,
:mod:`.intake`) and expressed in these values (:mod:`.answers`, :mod:`.errors`).
"""
