"""Analyses of tickets (SPEC §6). Import the submodules directly; this package imports nothing.

* :mod:`cvlth.analysis.overlap` -- IoU of kept weights between tickets, global and per layer,
  beside the IoU of independent random masks of the same per-layer densities
  (``iou_table``, ``pair_overlap``, ``random_iou``, ``expected_random_iou``).
* :mod:`cvlth.analysis.kernels` -- per-layer sparsity, fully pruned k×k kernels per layer and in
  total, the hypergeometric expectation under a random mask, kernel maps (``kernel_report``,
  ``kernel_map``, ``kernel_maps``).
* :mod:`cvlth.analysis.plots` -- matplotlib (Agg) figures from plain data, one PNG each, with a
  fixed colour per pre-training source (``plots.palette``): curves against remaining weights
  (``plots.curves``), bars per layer (``plots.bars``), IoU and kernel heatmaps (``plots.heatmaps``).
"""
