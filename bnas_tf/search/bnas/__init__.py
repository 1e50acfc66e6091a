"""BNAS: differentiable cell search for binary networks (cell.py the specification,
fused.py its fast form, supernet.py, derive.py, regularizers.py, method.py)."""
