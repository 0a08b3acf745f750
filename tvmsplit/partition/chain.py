"""Chain DP (Neurosurgeon, generalised to k devices on a path, memory caps and pins).

Devices take consecutive segments of the topological order: device d runs layers [q, p). For a
chain this covers every monotone assignment, so the result is optimal; for a DAG it is the
Neurosurgeon baseline (cuts only between consecutive layers of one topological order). A device
with a non-empty segment pays its per-request overhead (``Problem.overhead_ms``) in its stage time,
and, for throughput, the cost of sending what crosses its segment's end up its link
(``Problem.send_busy_ms``: device d's segment [q, p) sends cut[p]).

``best[d][p]``: the best cost with layers [0, p) on devices <= d. One numpy pass over q per
(d, p): O(k * n^2) arithmetic in O(k * n) vector operations.
"""
from __future__ import annotations

import numpy as np

from .problem import Breakdown, PlanningError, Problem, evaluate, layer_activation_bytes


def cut_bytes(problem: Problem) -> np.ndarray:
    """cut[p]: bytes sent up when layers [0, p) are below a hop and [p, n) above it."""
    return graph_cut_bytes(problem.graph, problem.tensor_bytes)


def graph_cut_bytes(g, tensor_bytes) -> np.ndarray:
    """``cut_bytes`` of a graph, with ``tensor_bytes(name)`` the size each tensor is sent at."""
    n = len(g.layers)
    pos = {t.name: -1 for t in g.inputs}
    for i, layer in enumerate(g.layers):
        for t in layer.outputs:
            pos[t.name] = i
    last: dict[str, int] = {}
    for _, j, t in g.edges:
        last[t.name] = max(last.get(t.name, -1), j)
    diff = np.zeros(n + 2)
    for name, r in last.items():
        a = pos[name]
        diff[a + 1] += tensor_bytes(name)  # crosses every p in (a, r]
        diff[r + 1] -= tensor_bytes(name)
    return np.cumsum(diff)[: n + 1]


def return_table(problem: Problem) -> np.ndarray:
    """ret[i, d]: ms to deliver the model outputs layer i makes, were it on device d
    (``Problem.return_ms``)."""
    g = problem.graph
    ret = np.zeros((len(g.layers), problem.n_devices))
    out_index = {t.name: o for o, t in enumerate(g.outputs)}
    for i, layer in enumerate(g.layers):
        for t in layer.outputs:
            if t.name in out_index:
                for d in range(problem.n_devices):
                    ret[i, d] += problem.return_ms(out_index[t.name], d)
    return ret


def deploy_segment_ms(problem: Problem, d: int, param_pre: np.ndarray, q, p):
    """``Problem.deploy_ms`` of device d holding layers [q, p) (q may be an array; p >= q)."""
    per_byte, fixed = problem.deploy_rate(d)
    q = np.asarray(q)
    nbytes = param_pre[p] - param_pre[q] + np.where(q < p, problem.deploy_code_bytes, 0)
    return np.where(nbytes > 0, per_byte * nbytes + fixed, 0.0)


def plan_chain(problem: Problem) -> Breakdown:
    g, k = problem.graph, problem.n_devices
    n = len(g.layers)
    throughput = problem.objective == "throughput"
    # latency and energy are both weighted sums (weights 1 for latency)
    wc, wh, w_ret = problem.energy_weights() if problem.objective == "energy" else \
        ((1.0,) * k, (1.0,) * (k - 1), 1.0)
    cut = cut_bytes(problem)
    comp = np.array(problem.compute, dtype=float).reshape(n, k)
    ret = return_table(problem)
    zero = np.zeros((1, k))
    comp_pre = np.vstack([zero, np.cumsum(comp, axis=0)])
    ret_pre = np.vstack([zero, np.cumsum(ret, axis=0)])
    params = np.array([layer.param_bytes for layer in g.layers], dtype=float)
    param_pre = np.concatenate([[0.0], np.cumsum(params)])
    act = np.array([layer_activation_bytes(g, i) for i in range(n)], dtype=float)
    pinned = problem.pinned()
    elsewhere = np.zeros((k, n + 1))  # prefix count of layers pinned to another device
    for d in range(k):
        flags = np.array([1.0 if i in pinned and pinned[i] != d else 0.0 for i in range(n)])
        elsewhere[d, 1:] = np.cumsum(flags)
    caps = problem.cap

    def hop(h: int) -> np.ndarray:  # ms to send cut[q] over link h, for every q
        link = problem.links[h]     # (a stream's bottleneck: the occupancy, no delay)
        delay = 0.0 if throughput else link.rtt_s / 2
        return np.where(cut > 0, 1e3 * (cut * 8 / link.up_bps + delay), 0.0)

    inf = np.inf
    best = np.full((k, n + 1), inf)
    arg = np.zeros((k, n + 1), dtype=int)
    q_all = np.arange(n + 1)
    for d in range(k):
        prev = best[d - 1] if d > 0 else np.zeros(n + 1)
        link_ms = hop(d - 1) if d > 0 else np.zeros(n + 1)
        link_w = wh[d - 1] if d > 0 else 0.0
        for p in range(n + 1):
            q = q_all[: p + 1] if d > 0 else np.array([0])
            # a non-empty segment [q, p) pays the device's per-request overhead
            seg = comp_pre[p, d] - comp_pre[q, d] + problem.overhead_ms(d, q < p)
            if throughput:  # a non-empty segment also sends what crosses p up its link
                busy = seg + problem.send_busy_ms(d, cut[p], q < p)
                cost = np.maximum.reduce([prev[q] if d > 0 else np.zeros(len(q)), link_ms[q], busy])
            else:
                cost = ((prev[q] if d > 0 else 0.0) + link_w * link_ms[q] + wc[d] * seg
                        + w_ret * (ret_pre[p, d] - ret_pre[q, d]))
                if problem.deploy_in_objective:
                    cost = cost + deploy_segment_ms(problem, d, param_pre, q, p)
            # memory: weights of [q, p) + the largest single-layer working set among them
            if np.isfinite(caps[d]) and p > 0:
                rev_max = np.maximum.accumulate(act[:p][::-1])[::-1]  # max(act[q:p]) for q < p
                peak = np.where(q < p, rev_max[np.minimum(q, p - 1)], 0.0)
                cost = np.where(param_pre[p] - param_pre[q] + peak <= caps[d], cost, inf)
            cost = np.where(elsewhere[d, p] - elsewhere[d, q] > 0, inf, cost)
            j = int(np.argmin(cost))
            best[d, p], arg[d, p] = cost[j], q[j]
    if not np.isfinite(best[k - 1, n]):
        raise PlanningError("no split into consecutive segments satisfies the memory caps and pins "
                            "(try the DAG planner, or larger caps)")
    dev = [0] * n
    p = n
    for d in range(k - 1, -1, -1):
        q = arg[d, p] if d > 0 else 0
        for i in range(q, p):
            dev[i] = d
        p = q
    return evaluate(problem, dev)
