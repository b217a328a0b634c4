"""A run's log files: every step and epoch record as a line of ``log.jsonl``, every epoch as a row of
``epochs.csv`` (timm's ``summary.csv``). Only the primary rank writes; a run without a folder logs nothing."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any


class RunLogger:
    def __init__(self, out_dir: str | Path | None, primary: bool = True):
        self.out_dir = Path(out_dir) if out_dir is not None and primary else None

    def log(self, record: dict[str, Any]) -> None:
        """Append one record (``record["kind"]`` is "step" or "epoch")."""
        if self.out_dir is None:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if record["kind"] == "epoch":
            path = self.out_dir / "epochs.csv"
            new = not path.exists()
            with open(path, "a", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(record))
                if new:
                    writer.writeheader()
                writer.writerow(record)


def records_csv(runs: dict[str, list[dict[str, Any]]]) -> str:
    """Every record of several runs as one CSV (a ``run`` column first, then the union of the records' fields
    in order of first appearance): the curves of all runs in one file, for a spreadsheet or pandas."""
    import io

    fields: dict[str, None] = {"run": None}
    for records in runs.values():
        for rec in records:
            fields.update(dict.fromkeys(k for k, v in rec.items() if not isinstance(v, (list, dict))))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore")
    writer.writeheader()
    for run, records in runs.items():
        for rec in records:
            writer.writerow({"run": run, **rec})
    return buf.getvalue()
