"""One run: the run kinds (``kinds.py``: each kind's config and what the study asks of it), their
executors (``pretrain.py``, ``finders.py``, ``transfer.py`` and what they share, ``training.py``), and
running one in the store (``execute.py``: ``ensure``, ``compute``; ``context.py``; ``recorded_data.py``;
``adaptation.py``; ``upstream.py``). Nothing here knows about a study."""
