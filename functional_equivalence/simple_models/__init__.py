"""Direct recovery of simple models through their prediction API: the attacks of Table 1 of Jagielski et al. 2020
that recover a model's parameters exactly (or to a stated precision) rather than learning a copy.

  lowd_meek          Lowd & Meek 2005: linear classifier from labels (sign witnesses, line searches)
  equation_solving   Tramer et al. 2016: logistic regression / MLP from probabilities; retraining from labels
  path_finding       Tramer et al. 2016: decision trees from leaf identifiers, with complete or incomplete queries
  milli              Milli et al. 2019: two-layer ReLU network from input gradients
  active_linear      Chandrasekaran et al. 2020: linear classifier by query-synthesis active learning

Each attack is a pure function of (oracle, box, config, rng): every query is `oracle(x)` in the API's output mode;
the attacker knows the input box and the API, never the victim. Query counts are results.
"""
