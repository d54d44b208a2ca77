"""Figures for the analyses. Every ``plot_*`` function takes plain data, writes one PNG and returns
its path. Import the modules directly (this package imports nothing):

* :mod:`~cvlth.analysis.plots.palette` -- a fixed colour per pre-training source (SimCLR is orange in
  every figure) and per mask kind; ``palette_colors`` for callers that style figures (no matplotlib);
* :mod:`~cvlth.analysis.plots.figure` -- matplotlib on the Agg backend, saving one PNG, layer labels;
* :mod:`~cvlth.analysis.plots.curves` -- accuracy and mask measures against remaining weights (log
  axis decreasing to the right: 100, 80, 64, ... %, as in the paper), one line per source or kind;
* :mod:`~cvlth.analysis.plots.bars` -- grouped bars per layer: sparsity, fully pruned kernels;
* :mod:`~cvlth.analysis.plots.heatmaps` -- the pairwise IoU matrix and kernel maps of a mask.

Sparsities are fractions in [0, 1] (as :attr:`Mask.sparsity`).
"""
