"""Writing results without losing a user's files, for every entry point (both CLIs).

- `check_writable(folder)`: prove a folder can take a file before any model work.
- `StagedOutputs`: every output of one run is written under a temporary name beside its target
  (`.NAME.partial-PID.EXT`, so the writer still sees the right extension) and renamed into place only when
  all were written; on an error or Ctrl-C the temporary files are removed and earlier results stay.
- `console_entry(main, prog)`: a console script's Ctrl-C ends with status 130 and one line, no traceback.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path


def check_writable(folder: os.PathLike):
    """Create the folder if needed and make (and remove) a file in it; ValueError with the reason if not."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".slicer-ai-write-test-"):
            pass
    except OSError as e:
        raise ValueError(f"cannot write to {folder}: {e.strerror or e}") from None


class StagedOutputs:
    """with StagedOutputs(extensions) as st: write to st.temp(final) for each output; all are renamed to
    their finals when the block ends without error, none otherwise. `extensions`: multi-part suffixes
    (".nii.gz", ".seg.nrrd") kept whole at the end of the temporary name."""

    def __init__(self, extensions=()):
        self.extensions = tuple(extensions)
        self.staged = []                     # (temporary, final)

    def temp(self, final: os.PathLike) -> Path:
        final = Path(final)
        ext = next((e for e in self.extensions if final.name.endswith(e)), final.suffix)
        t = final.parent / f".{final.name[: len(final.name) - len(ext)]}.partial-{os.getpid()}{ext}"
        self.staged.append((t, final))
        return t

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                blocked = [str(final) for _, final in self.staged if final.is_dir()]
                if blocked:                  # checked before the first rename: all outputs or none
                    raise RuntimeError(f"cannot replace {blocked[0]}: it is a folder")
                for tmp, final in self.staged:
                    os.replace(tmp, final)
                self.staged.clear()
        finally:                             # failed or interrupted: no partial file, earlier results intact
            for tmp, _ in self.staged:
                tmp.unlink(missing_ok=True)
        return False


def console_entry(main, prog: str, note: str = ""):
    """Run a CLI's main(); Ctrl-C -> status 130 with one line on stderr."""
    try:
        return main()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted{note}", file=sys.stderr)
        return 130
