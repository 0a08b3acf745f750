"""Exact DAG partitioning over k devices on a path as a mixed-integer program (scipy's HiGHS).

Variables: x[l,d] (layer l on device d, binary); z[t,h] (tensor t crosses link h); w[h] (link h
carries anything: pays rtt/2 once); a[d] (device d's largest single-layer working set); T (the
bottleneck, throughput objective); u[d] (device d runs a layer, so it pays its per-request
overhead, ``Problem.overhead_ms``, in its compute; only for devices with an overhead > 0 or a
send cost); for throughput with a send cost (``Problem.send_busy_ms``), s[h] (device h runs
layers and sends up link h) and q[t,h] (the same for tensor t: its bytes' share of the cost),
both >= z[t,h] + u[h] - 1, continuous.
With y[l,h] = sum_{d<=h} x[l,d] ("l is at or below h"):
- monotone: y[v,h] <= y[u,h] for every edge u->v (data only flows up);
- z[t,h] >= y[producer,h] - y[consumer,h] for every consumer (the input is always at d0);
- w[h] >= z[t,h]; u[d] >= x[l,d];
- memory: sum params * x + a[d] <= cap[d], a[d] >= act[l] * x[l,d];
- pins fix x; a latency ceiling bounds the latency expression.
Minimises the latency expression, or T >= every device's compute (+ send) and every link's
occupancy (its transfer without the rtt/2) and then, at that T, the latency (two solves:
lexicographic). Costs are exactly those of
``problem.evaluate``. The outputs' return is ``Problem.return_ms`` per (output, device), a
coefficient of x. With ``deploy_in_objective`` the latency objective adds the deployment time:
per byte of weights on a device (a coefficient of x) plus, through v[d] (device d is shipped
anything), its code and the fixed per-hop delays.

Exact means exact. HiGHS stops by default at a relative gap of 1e-4 (a property test found a
throughput plan 0.004 ms, 8e-5 relative, above the oracle's optimum); here ``mip_rel_gap`` is
``Problem.mip_rel_gap`` (0 by default: solve to optimality). The absolute gap stays at HiGHS's
1e-6 (scipy does not expose it): the optimum is proven to within 1e-6 ms. A weighted tie-break
(T + 1e-6 x latency, as before) was not exact either: it traded a bottleneck 1e-5 ms above the
optimum for 11 ms less latency (found by the property test at a 1e-9 tolerance), hence the two
solves. The solver's proven lower bound on the objective is ``Breakdown.lower_bound`` (for
throughput: the first solve's bound on T), so a plan stopped by ``time_limit_s`` (per solve) or
a non-zero gap says how far from the optimum it may be.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_matrix

from .problem import Breakdown, PlanningError, Problem, evaluate, layer_activation_bytes

TIME_LIMIT_S = 60.0  # the default of Problem.time_limit_s


def plan_ilp(problem: Problem) -> Breakdown:
    g, k = problem.graph, problem.n_devices
    n = len(g.layers)
    H = k - 1
    readers: dict[str, set[int]] = {}
    for _, j, t in g.edges:
        readers.setdefault(t.name, set()).add(j)
    tensors = list(readers)
    producer = g.producer
    outputs = {o.name: o for o in g.outputs}

    # variable layout
    nx_ = n * k
    X = lambda l, d: l * k + d  # noqa: E731
    Z0 = nx_
    Zi = {(t, h): Z0 + ti * H + h for ti, t in enumerate(tensors) for h in range(H)}
    W0 = Z0 + len(tensors) * H
    A0 = W0 + H
    T = A0 + k
    throughput = problem.objective == "throughput"
    # the devices whose send cost counts (throughput only): each needs u[d] too
    senders = [h for h in range(H) if throughput and any(problem.send_rate(h))]
    Ui = {d: T + 1 + j for j, d in enumerate(d for d in range(k)
                                             if problem.overhead[d] > 0 or d in senders)}
    deploy = problem.deploy_in_objective
    V0 = T + 1 + len(Ui)  # v[d]: device d is shipped a library (deployment's fixed terms)
    Vi = {d: V0 + j for j, d in enumerate(d for d in range(k)
                                           if deploy and any(problem.deploy_rate(d)))}
    # s[h] >= z[t,h] + u[h] - 1: device h runs layers and sends something up link h; q[t,h] the
    # same per tensor (its bytes' share of the send cost); continuous, pushed down by T
    S0 = V0 + len(Vi)
    Si = {h: S0 + j for j, h in enumerate(senders)}
    Q0 = S0 + len(Si)
    Qi = {(t, h): Q0 + j for j, (t, h) in enumerate((t, h) for h in senders for t in tensors)}
    nvar = Q0 + len(Qi)

    def hop_terms(h: int) -> dict[int, float]:
        link = problem.links[h]
        terms = {Zi[t, h]: 1e3 * problem.tensor_bytes(t) * 8 / link.up_bps for t in tensors}
        terms[W0 + h] = 1e3 * link.rtt_s / 2
        return terms

    def compute_terms(d: int) -> dict[int, float]:
        terms = {X(l, d): problem.compute[l][d] for l in range(n)}
        if d in Ui:
            terms[Ui[d]] = problem.overhead_ms(d, True)
        return terms

    def busy_terms(d: int) -> dict[int, float]:
        """Device d's time per request in the bottleneck: compute + its send
        (``Problem.send_busy_ms``: fixed ms once through s[d], per byte through q[t,d])."""
        terms = compute_terms(d)
        if d in Si:
            fixed, per_byte = problem.send_rate(d)
            terms[Si[d]] = fixed
            for t in tensors:
                terms[Qi[t, d]] = per_byte * problem.tensor_bytes(t)
        return terms

    def weighted(wc, wh, w_ret) -> dict[int, float]:
        """sum_d wc[d] * compute_d + sum_h wh[h] * hop_h + w_ret * return, as variable weights."""
        terms: dict[int, float] = {}
        for d in range(k):
            for v, c in compute_terms(d).items():
                terms[v] = terms.get(v, 0.0) + wc[d] * c
        for h in range(H):
            for v, c in hop_terms(h).items():
                terms[v] = terms.get(v, 0.0) + wh[h] * c
        out_index = {name: o for o, name in enumerate(outputs)}
        for l, layer in enumerate(g.layers):
            for t in layer.outputs:
                if t.name in outputs:
                    for d in range(k):
                        back = problem.return_ms(out_index[t.name], d)
                        terms[X(l, d)] = terms.get(X(l, d), 0.0) + w_ret * back
        return terms

    def deploy_terms() -> dict[int, float]:
        terms: dict[int, float] = {}
        for d, v in Vi.items():
            per_byte, fixed = problem.deploy_rate(d)
            for l, layer in enumerate(g.layers):
                terms[X(l, d)] = per_byte * layer.param_bytes
            terms[v] = per_byte * problem.deploy_code_bytes + fixed
        return terms

    latency = weighted((1.0,) * k, (1.0,) * H, 1.0)

    rows, cols, vals, lo, hi = [], [], [], [], []

    def add(terms: dict[int, float], lb: float, ub: float) -> None:
        r = len(lo)
        for v, c in terms.items():
            rows.append(r), cols.append(v), vals.append(c)
        lo.append(lb), hi.append(ub)

    for l in range(n):
        add({X(l, d): 1.0 for d in range(k)}, 1, 1)
    for h in range(H):
        for u, v, _ in g.edges:
            if u >= 0:
                terms = {X(v, d): 1.0 for d in range(h + 1)}
                for d in range(h + 1):
                    terms[X(u, d)] = terms.get(X(u, d), 0.0) - 1.0
                add(terms, -np.inf, 0)
        for t in tensors:
            p = producer[t]
            for j in readers[t]:
                # z >= y[p,h] - y[j,h]  <=>  z - y[p,h] + y[j,h] >= 0 (y[input] = 1)
                terms = {Zi[t, h]: 1.0}
                for d in range(h + 1):
                    terms[X(j, d)] = terms.get(X(j, d), 0.0) + 1.0
                if p >= 0:
                    for d in range(h + 1):
                        terms[X(p, d)] = terms.get(X(p, d), 0.0) - 1.0
                    add(terms, 0, np.inf)
                else:
                    add(terms, 1, np.inf)
            add({W0 + h: 1.0, Zi[t, h]: -1.0}, 0, np.inf)  # w[h] >= z[t,h]
    for d, u in Ui.items():
        for l in range(n):
            add({u: 1.0, X(l, d): -1.0}, 0, np.inf)  # u[d] >= x[l,d]
    for h, sv in Si.items():  # s[h], q[t,h] >= z[t,h] + u[h] - 1; s[h] >= q[t,h]
        for t in tensors:
            add({Qi[t, h]: 1.0, Zi[t, h]: -1.0, Ui[h]: -1.0}, -1, np.inf)
            add({sv: 1.0, Qi[t, h]: -1.0}, 0, np.inf)
    for d, v in Vi.items():  # v[d] >= x[l,d] when l makes d ship something
        for l in range(n):
            if problem.deploy_code_bytes or g.layers[l].param_bytes:
                add({v: 1.0, X(l, d): -1.0}, 0, np.inf)
    caps = problem.cap
    for d in range(k):
        if np.isfinite(caps[d]):
            terms = {X(l, d): float(g.layers[l].param_bytes) for l in range(n)}
            terms[A0 + d] = 1.0
            add(terms, -np.inf, caps[d])
            for l in range(n):
                add({A0 + d: 1.0, X(l, d): -float(layer_activation_bytes(g, l))}, 0, np.inf)
    for l, d in problem.pinned().items():
        add({X(l, d): 1.0}, 1, 1)
    if problem.latency_ceiling_ms is not None:
        add(latency, -np.inf, problem.latency_ceiling_ms)

    if problem.objective == "throughput":
        for d in range(k):
            add({T: 1.0, **{v: -w for v, w in busy_terms(d).items()}}, 0, np.inf)
        for h in range(H):   # the link's occupancy: no rtt/2 (w[h]) in a stream
            add({T: 1.0, **{v: -w for v, w in hop_terms(h).items() if v != W0 + h}}, 0, np.inf)
    objective = weighted(*problem.energy_weights()) if problem.objective == "energy" else latency
    if deploy:
        objective = dict(objective)
        for v, w in deploy_terms().items():
            objective[v] = objective.get(v, 0.0) + w
    c = np.zeros(nvar)
    for v, w in objective.items():
        c[v] += w

    integrality = np.zeros(nvar)
    integrality[:nx_] = 1
    integrality[T + 1:S0] = 1   # s and q are continuous: their bounds are integral
    ub = np.full(nvar, np.inf)
    ub[:A0] = 1.0
    ub[T + 1:] = 1.0
    bounds = Bounds(np.zeros(nvar), ub)
    options = {"time_limit": problem.time_limit_s, "mip_rel_gap": problem.mip_rel_gap}

    def solve(cost):
        A = coo_matrix((vals, (rows, cols)), shape=(len(lo), nvar)).tocsr()
        return milp(cost, constraints=LinearConstraint(A, lo, hi), integrality=integrality,
                    bounds=bounds, options=options)

    if problem.objective == "throughput":
        # lexicographic: the least bottleneck T first, then the least latency at that T (a
        # weighted tie-break term would trade a bottleneck 1e-5 ms worse for 11 ms of latency)
        first = solve(np.eye(1, nvar, T).ravel())
        if first.x is None:
            raise PlanningError("no assignment satisfies the memory caps, pins and latency ceiling"
                                if first.status == 2 else f"the MILP solver stopped: {first.message}")
        bound = first.mip_dual_bound if first.mip_dual_bound is not None else first.fun
        add({T: 1.0}, -np.inf, first.fun + 1e-9 * max(1.0, abs(first.fun)))
        res = solve(c)
        if res.x is None:  # out of time: keep the first solution
            res = first
    else:
        res = solve(c)
        if res.x is None:
            raise PlanningError("no assignment satisfies the memory caps, pins and latency ceiling"
                                if res.status == 2 else f"the MILP solver stopped: {res.message}")
        bound = res.mip_dual_bound if res.mip_dual_bound is not None else res.fun
    x = res.x[:nx_].reshape(n, k)
    b = evaluate(problem, [int(np.argmax(x[l])) for l in range(n)])
    return replace(b, lower_bound=min(float(bound), b.objective(problem.objective)))
