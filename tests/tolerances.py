"""Tolerances of float comparisons whose two sides compute the same math along different kernel
paths: another grad mode, batch shape, fused or unfused bias, or library. Their roundings differ from
one CPU to the next (no_grad against autograd: 0 on the AMD machines, 1.3e-7 on an Intel Xeon), so
such comparisons never assert bit-equality. Both sides on one path (a save/load round trip, the
evaluation cache against the precomputed table, a resumed run) stay exact."""

#: float32 values of order one: a few units in the last place, far below any real difference
FLOAT32_PATHS = {"rtol": 1e-5, "atol": 1e-6}
#: float64 values of order one
FLOAT64_PATHS = {"rtol": 1e-12, "atol": 1e-14}
