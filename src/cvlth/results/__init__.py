"""What a study concludes, as plain data: the matching rule (``matching.py``) with its intervals
(``uncertainty.py``), the paper's claims (``claims.py``), and the typed result files the study writes
and the report reads (``outputs.py``). Nothing here runs anything."""
