"""benchmarks/quickstart.py's own logic: --extra's items as launcher flags, and the headline check per query
strategy with its paired, seed-by-seed difference."""

from benchmarks.quickstart import headline, launcher_flags


def test_extra_items_without_a_dash_continue_the_flag_before():
  assert launcher_flags(["--strategy=random", "typiclust", "--seeds=10"]) == [
    "--strategy=random,typiclust",
    "--seeds=10",
  ]
  assert launcher_flags(["--strategy=kcenter", "--round_steps=500"]) == ["--strategy=kcenter", "--round_steps=500"]
  assert launcher_flags([]) == []


def _row(method, queries, strategy, fidelities):
  mean = sum(fidelities) / len(fidelities)
  seeds = [{"fidelity": f, "val_fidelity": f} for f in fidelities]
  return {
    "method": method,
    "queries": queries,
    "strategy": strategy,
    "fidelity": mean,
    "fidelity_std": 0.0,
    "val_fidelity": mean,
    "val_fidelity_std": 0.0,
    "per_seed": seeds,
  }


def test_headline_compares_rows_of_the_same_strategy_only():
  rows = [
    {"method": "victim", "queries": 0, "strategy": ""},
    _row("fs", 1000, "random", [0.90, 0.92, 0.94]),
    _row("mixmatch", 200, "random", [0.91, 0.90, 0.94]),
    _row("fs", 1000, "typiclust", [0.80, 0.80, 0.80]),
    _row("mixmatch", 200, "typiclust", [0.85, 0.80, 0.81]),
  ]
  lines = headline(rows)
  assert len(lines) == 4 and all(line.startswith(("[random]", "[typiclust]")) for line in lines)
  random_test = next(line for line in lines if line.startswith("[random] mixmatch@200 < fs@1000 on fidelity"))
  # seed by seed: +0.01, -0.02, 0.00 -> mean -0.0033, one win, one tie, one loss
  assert "does not hold; paired -0.0033" in random_test and "1/1/1 wins/ties/losses" in random_test
  typ = next(line for line in lines if line.startswith("[typiclust] mixmatch@200 >= fs@1000 on fidelity"))
  assert "holds; paired +0.0200" in typ and "2/1/0" in typ


def test_headline_of_one_strategy_has_no_prefix_and_no_pairing_across_different_repetitions():
  rows = [_row("fs", 200, "random", [0.9, 0.9]), _row("mixmatch", 50, "random", [0.95, 0.95, 0.95])]
  lines = headline(rows)
  assert lines[0].startswith("mixmatch@50 >= fs@200 on fidelity: 0.9500")
  assert "paired" not in lines[0]
