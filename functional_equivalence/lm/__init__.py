"""Stealing the last layer of a language model (Carlini et al. 2024): hidden size from the singular values of
logit vectors (`spectrum`), the unembedding up to an h x h transform (`recover`), full logit vectors rebuilt from
top-k log-probabilities with a logit bias (`bias`), the attack loop (`attack`), evaluation with the true W
(`evaluate`, used by the experiment only)."""
