"""Per-edge loops of :mod:`oocgnn.prepare.multilevel`, compiled with numba.

Each kernel works on one streamed CSR block: ``row`` is the id of its first
node, ``ptr`` the block's row pointer relative to ``cols``/``w``.  Nodes are
visited in id order and every move is applied at once (sequential label
propagation), so results are deterministic and later nodes see earlier moves.
``conn`` is a dense scratch array indexed by label, all zeros between calls;
``touched`` lists the labels set in it so only those are reset.
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, inline="always")
def _connect(i, ptr, cols, w, label, conn, touched):
    """Add the weight of node ``i``'s edges into ``conn`` per neighbour label; returns how many labels it touched."""
    nt = 0
    for j in range(ptr[i], ptr[i + 1]):
        lab = label[cols[j]]
        if conn[lab] == 0:
            touched[nt] = lab
            nt += 1
        conn[lab] += w[j]
    return nt


@njit(cache=True, nogil=True)
def cluster_block(row, ptr, cols, w, vw, label, cweight, max_weight, conn, touched):
    """Each node joins the neighbouring cluster it has most edge weight to, if
    that cluster stays at most ``max_weight``; ties keep the current cluster."""
    moved = 0
    for i in range(len(ptr) - 1):
        u = row + i
        own = label[u]
        nt = _connect(i, ptr, cols, w, label, conn, touched)
        best = own
        best_c = conn[own]
        wu = vw[u]
        for t in range(nt):
            lab = touched[t]
            c = conn[lab]
            if lab != own and c > best_c and cweight[lab] + wu <= max_weight:
                best, best_c = lab, c
            conn[lab] = 0
        conn[own] = 0
        if best != own:
            cweight[own] -= wu
            cweight[best] += wu
            label[u] = best
            moved += 1
    return moved


@njit(cache=True)
def pack_isolated(nodes, vw, label, cweight, max_weight):
    """Nodes without edges cut nothing wherever they go: pack them into full clusters."""
    head = -1
    for u in nodes:
        if head >= 0 and cweight[head] + vw[u] <= max_weight:
            cweight[label[u]] -= vw[u]
            cweight[head] += vw[u]
            label[u] = head
        else:
            head = label[u]


@njit(cache=True, nogil=True)
def refine_block(row, ptr, cols, w, vw, part, psize, cap, floor, conn, touched):
    """Move a node to the neighbouring part that cuts fewest of its edges, if the
    cut drops (or stays equal while the parts get more even), the target part
    stays at most ``cap`` and its own part at least ``floor``."""
    moved = 0
    for i in range(len(ptr) - 1):
        u = row + i
        p = part[u]
        nt = _connect(i, ptr, cols, w, part, conn, touched)
        own = conn[p]
        wu = vw[u]
        best = p
        best_gain = 0
        leave = psize[p] - wu >= floor
        for t in range(nt):
            q = touched[t]
            if leave and q != p and psize[q] + wu <= cap:
                g = conn[q] - own
                if g > best_gain or (g == best_gain and g >= 0 and psize[q] + wu < psize[p]
                                     and (best == p or psize[q] < psize[best])):
                    best, best_gain = q, g
            conn[q] = 0
        conn[p] = 0
        if best != p:
            psize[p] -= wu
            psize[best] += wu
            part[u] = best
            moved += 1
    return moved


@njit(cache=True, nogil=True)
def rebalance_candidates(row, ptr, cols, w, vw, part, psize, cap, over, conn, touched, target, gain):
    """For every node of an over-full part: the part with room it would cut
    fewest edges in (the lightest part if no neighbouring part has room)."""
    lightest = np.argmin(psize)
    for i in range(len(ptr) - 1):
        u = row + i
        p = part[u]
        if not over[p]:
            continue
        nt = _connect(i, ptr, cols, w, part, conn, touched)
        own = conn[p]
        best = -1
        best_gain = 0
        for t in range(nt):
            q = touched[t]
            if q != p and psize[q] + vw[u] <= cap and (best < 0 or conn[q] - own > best_gain):
                best, best_gain = q, conn[q] - own
            conn[q] = 0
        conn[p] = 0
        if best < 0:
            best, best_gain = lightest, -own
        target[u] = best
        gain[u] = best_gain


@njit(cache=True)
def apply_moves(order, target, vw, part, psize, cap):
    """Apply candidate moves best-first while their source is over ``cap`` and the target has room."""
    for u in order:
        p, q = part[u], target[u]
        if psize[p] > cap and psize[q] + vw[u] <= cap:
            psize[p] -= vw[u]
            psize[q] += vw[u]
            part[u] = q


@njit(cache=True)
def split_part(indptr, indices, vw, part, p, q, want, seed_node):
    """Move about ``want`` weight of part ``p`` into the empty part ``q``: a breadth-first
    region of ``p`` grown from ``seed_node`` (then from any other node of ``p`` when the
    region runs out), so the new part is connected where ``p`` is.  Returns the weight moved."""
    n = len(indptr) - 1
    queue = np.empty(n, np.int32)  # node ids < 2**31 (checked on entry)
    head, tail, moved = 0, 0, 0
    nxt = 0
    start = seed_node
    while moved < want:
        if head == tail:  # region exhausted: restart from the next node still in p
            while start < 0 or part[start] != p:
                if nxt >= n:
                    return moved
                start = nxt
                nxt += 1
            part[start] = q
            moved += vw[start]
            queue[tail] = start
            tail += 1
            start = -1
        u = queue[head]
        head += 1
        for j in range(indptr[u], indptr[u + 1]):
            v = indices[j]
            if part[v] == p and moved < want:
                part[v] = q
                moved += vw[v]
                queue[tail] = v
                tail += 1
    return moved
