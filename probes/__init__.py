"""Probes: look at a direction, a null space and a steering map before running the full erasure.

* :mod:`probes.separability`: does a direction separate two activation sets, per layer?
* :mod:`probes.nullspace_rank`: how much null space each layer has, what leaks, what the gate sees.
* :mod:`probes.steering_effects`: what steering does layer by layer, across strengths; the operating window;
  a generation-based leakage grid and the setting it chooses.
* :mod:`probes.gate_distribution`: where a fitted eraser's gate fires, per group of people (in the fit or not).
* :mod:`probes.direction_stability`: cosine between directions from disjoint halves of the contrastive pairs.
* :mod:`probes.pgd_sweep`: how large an image perturbation flips a refusal (PGD across epsilons).
* :mod:`probes.plots`: seaborn figures for each (returned, never only shown).
"""
