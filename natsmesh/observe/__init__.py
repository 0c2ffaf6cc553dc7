"""Observation: what every caller counts, and how it reaches an observer.

:mod:`._meter` counts calls (pure), :mod:`._wire` names the subjects and checks the
payloads (pure), :mod:`._report` publishes summaries and tap samples only while an
observer shows interest, and :mod:`._hooks` is the one place the call path and the
request handler call into.
"""
