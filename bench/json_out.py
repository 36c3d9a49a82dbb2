"""JSON output of the benchmark scripts."""
import json
import os


def write_json(path: str, value) -> None:
  """Writes `value` to `path`, making its folder. The scripts call it after every record, so a
  run stopped by a time limit keeps what it measured."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(value, f, indent=1)
