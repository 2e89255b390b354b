"""The monthly lone-work report (CONTRACT §10): reading it from the store (`service`), and
printing it as HTML for A4 or as CSV (`render`). The numbers are `domain/report.py`'s."""
