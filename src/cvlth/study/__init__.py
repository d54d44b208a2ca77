"""The study: its YAML (``config.py``), the plan of runs (``plan.py``, checked by ``validation.py``),
scheduling them (``runner.py``, ``parallel.py``, ``ray_executor.py``, ``resources.py``), their compute
cost (``costs.py``, ``cost_files.py``, ``cost_measure.py``), and the whole study's outputs: its tables,
claims (``claim_inputs.py``) and ticket speeds (``speed.py``). One run is :mod:`cvlth.runs`; what a
study concludes is :mod:`cvlth.results`."""
