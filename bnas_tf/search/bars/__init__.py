"""BARS: joint macro (width, depth) and micro (cell) search for binary networks
(cell.py, supernet.py, costs.py with the FLOPs budget, derive.py, method.py)."""
