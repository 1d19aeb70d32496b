"""The device-run helpers: lossless packing of image splits, and merging device result files into one table."""

import json

import numpy as np
import pytest

from benchmarks import gpu_table3, pack_images


def _splits(root, n_train=40, n_test=12):
  rng = np.random.default_rng(3)
  (root / "toy").mkdir(parents=True)
  for split, n in (("train", n_train), ("test", n_test)):
    image = rng.integers(0, 256, (n, 9, 7, 3), dtype=np.uint8)  # noise: nothing for a lossy codec to hide in
    np.savez(root / "toy" / f"{split}.npz", image=image, label=rng.integers(0, 10, n))


def test_pack_unpack_is_bit_exact_on_a_seeded_subset(tmp_path):
  _splits(tmp_path / "src")
  packed = tmp_path / "toy.pack.npz"
  summary = pack_images.pack(tmp_path / "src", "toy", {"train": 25, "test": 100}, 0, packed)
  assert summary["train"][0] == 25 and summary["test"][0] == 12  # a size above the split keeps it whole
  pack_images.unpack(packed, tmp_path / "dst", "toy")
  for split in ("train", "test"):
    src, dst = np.load(tmp_path / "src/toy" / f"{split}.npz"), np.load(tmp_path / "dst/toy" / f"{split}.npz")
    # every unpacked image is one of the source's, pixel for pixel, with its label, in the source's order
    index = [next(i for i in range(len(src["image"])) if np.array_equal(src["image"][i], im)) for im in dst["image"]]
    assert index == sorted(index) and len(set(index)) == len(index)
    np.testing.assert_array_equal(src["label"][index], dst["label"])


def test_unpack_refuses_a_file_whose_pixels_do_not_match_its_hash(tmp_path):
  _splits(tmp_path / "src")
  packed = tmp_path / "toy.pack.npz"
  pack_images.pack(tmp_path / "src", "toy", {"train": 10, "test": 5}, 0, packed)
  arrays = dict(np.load(packed))
  arrays["train_label"] = (arrays["train_label"] + 1) % 10
  np.savez(packed, **arrays)
  with pytest.raises(ValueError, match="train decodes to content hash"):
    pack_images.unpack(packed, tmp_path / "dst", "toy")


def _row(method, queries, fidelity):
  return {
    "method": method,
    "queries": queries,
    "seeds": 2,
    "steps": 10,
    "accuracy": 0.5,
    "accuracy_std": 0.01,
    "fidelity": fidelity,
    "fidelity_std": 0.02,
    "noise_top": "1:0.50",
    "seconds": 3.0,
  }


def test_render_merges_calls_and_keeps_only_finished_runs(tmp_path):
  victim = {"method": "victim", "queries": 0, "accuracy": 0.8, "noise_top": "2:0.60"}
  first = {
    "command": "python -m benchmarks.gpu_table3 A",
    "lock": {},
    "runs": {
      "fs": {"launcher_command": "-m launch.run fs", "seconds": 5.0, "rows": [victim, _row("fs", 250, 0.49)]},
      "mixmatch1000_4000": {"skipped": "not started"},
    },
  }
  second = {
    "command": "python -m benchmarks.gpu_table3 B",
    "lock": {},
    "runs": {
      "mixmatch1000_4000": {
        "launcher_command": "-m launch.run mm",
        "seconds": 7.0,
        "rows": [victim, _row("mixmatch", 1000, 0.64)],
      },
    },
  }
  paths = []
  for i, result in enumerate((first, second)):
    paths.append(tmp_path / f"{i}.json")
    paths[-1].write_text(json.dumps(result))
  merged, table = gpu_table3.render([str(p) for p in paths], "note")
  assert list(merged["runs"]) == ["fs", "mixmatch1000_4000"] and len(merged["calls"]) == 2
  lines = table.splitlines()
  assert sum(line.startswith("| - | victim |") for line in lines) == 1  # one victim row for the shared victim
  assert any(
    line.startswith("| fs | fs | 250 |") and "0.4900 ± 0.0200" in line and "53.35 / 53.61" in line for line in lines
  )
  assert any(line.startswith("| mixmatch1000_4000 | mixmatch | 1000 |") and "0.6400 ± 0.0200" in line for line in lines)


def test_render_reads_its_own_merge_back(tmp_path):
  call = {
    "command": "python -m benchmarks.gpu_table3 A",
    "lock": {},
    "runs": {
      "fs": {"launcher_command": "-m launch.run fs", "seconds": 5.0, "rows": [_row("fs", 250, 0.49)]},
    },
  }
  (tmp_path / "call.json").write_text(json.dumps(call))
  merged, table = gpu_table3.render([str(tmp_path / "call.json")], "note")
  (tmp_path / "merged.json").write_text(json.dumps(merged))
  again, table_again = gpu_table3.render([str(tmp_path / "merged.json")], "note")
  assert again == merged and table_again.split("Table: ")[1].count("| fs | fs | 250 |") == 1
