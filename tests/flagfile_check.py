"""Run in a subprocess by test_launcher.py: `python -m tests.flagfile_check WORKDIR NAME...` parses each flagfile as
`python -m launch.run --flagfile=NAME --workdir=WORKDIR --dry_run` does (the launcher's flagfile lookup, its flag
definitions and validators), one after another in one process (one start-up instead of one per flagfile), and
prints {name: {"ok": true, "values": the dry run's printed values} or {"ok": false, "error": message}} as JSON."""

import json
import sys

from absl import flags

from launch import common, run


def check(workdir: str, names: list[str]) -> dict:
  out = {}
  for name in names:
    flags.FLAGS.unparse_flags()  # every flag back to its default, as in a fresh process
    argv = run.resolve_flagfiles(["launch.run", f"--flagfile={name}", f"--workdir={workdir}", "--dry_run"])
    try:
      flags.FLAGS(argv)
    except flags.Error as e:
      out[name] = {"ok": False, "error": str(e)}
      continue
    out[name] = {"ok": True, "values": json.loads(json.dumps(common.flag_values(), default=str))}
  return out


if __name__ == "__main__":
  print(json.dumps(check(sys.argv[1], sys.argv[2:])))
