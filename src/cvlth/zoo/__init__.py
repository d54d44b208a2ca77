"""cvlth's own model zoo: pre-trained θ_p for the built-in world, shipped with the package.

* :mod:`cvlth.zoo.files` — where the checkpoints are and what ``world:NAME`` means (a leaf);
* :mod:`cvlth.zoo.quality` — how good a θ_p is: top-1, k-NN and linear-probe accuracy;
* :mod:`cvlth.zoo.build` — the packaged recipe (``zoo/recipe.yaml``) run in the store, measured
  and exported with its provenance.
"""
