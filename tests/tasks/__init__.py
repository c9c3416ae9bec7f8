"""The task-head tests. Their helpers are shared with the other test folders: see tests/helpers.py."""
from tests.helpers import DIM, make_model, run_corpus, write_corpus  # noqa: F401 (imported from here)
