"""Send a stage's logging, warnings and any traceback to its log file (readable with tail -f)."""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def log_to(path):
    """Log INFO and above to `path` (appending); an exception is logged there with its traceback, then re-raised."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    try:
        yield
    except BaseException:
        logging.getLogger("gradscope").exception("failed")
        print(f"gradscope: failed; see {path}", file=sys.stderr)
        raise
    finally:
        root.removeHandler(handler)
        handler.close()
