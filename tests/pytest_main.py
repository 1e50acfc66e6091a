"""Entry point for Bazel's py_test targets: run pytest on the given test files."""
import sys

import pytest

if __name__ == "__main__":
    sys.exit(pytest.main(["-q", *sys.argv[1:]]))
