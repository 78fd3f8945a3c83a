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
    stays at most ``cap`` and its own part at least ``floor``.

    Returns ``(moved, gain, cut)``: nodes moved, the edge weight those moves took
    out of the cut, and the cut weight of the visited nodes as each was visited
    (the caller compares the two to see when another pass stops paying).
    """
    moved = 0
    gain = 0
    cut = 0
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
            if q != p:
                cut += conn[q]
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
            gain += best_gain
    return moved, gain, cut


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


@njit(cache=True, nogil=True)
def coarse_block(row, ptr, cols, w, cmap, slot, cpos, grp_row, grp_fill, tmp_c, tmp_w, out_r, out_c, out_w):
    """Aggregate one fine block's entries into coarse ``(row, col, weight)`` triples; returns how many.

    Entries inside a cluster are dropped; the rest are grouped by coarse row
    (counting sort over the rows this block touches, in first-seen order) and
    merged per column with the dense slot array ``cpos``.  ``slot`` and ``cpos``
    (int32 ``[num_coarse]``) must be all -1 and are left so; the order of the
    output is irrelevant (buckets are sorted later), only its sums matter.
    """
    ng = 0
    for i in range(len(ptr) - 1):  # pass 1: groups by coarse row, entries per group
        cu = cmap[row + i]
        for j in range(ptr[i], ptr[i + 1]):
            if cmap[cols[j]] == cu:
                continue
            if slot[cu] < 0:
                slot[cu] = ng
                grp_row[ng] = cu
                grp_fill[ng + 1] = 0
                ng += 1
            grp_fill[slot[cu] + 1] += 1
    grp_fill[0] = 0
    for g in range(ng):
        grp_fill[g + 1] += grp_fill[g]
    for i in range(len(ptr) - 1):  # pass 2: place (col, weight) by group
        cu = cmap[row + i]
        for j in range(ptr[i], ptr[i + 1]):
            cv = cmap[cols[j]]
            if cv == cu:
                continue
            g = slot[cu]
            tmp_c[grp_fill[g]] = cv
            tmp_w[grp_fill[g]] = w[j]
            grp_fill[g] += 1
    m = 0
    start = 0
    for g in range(ng):  # pass 3: merge equal columns of each group
        cu = grp_row[g]
        first = m
        for j in range(start, grp_fill[g]):
            cv = tmp_c[j]
            k = cpos[cv]
            if k < 0:
                cpos[cv] = m - first
                out_r[m] = cu
                out_c[m] = cv
                out_w[m] = tmp_w[j]
                m += 1
            else:
                out_w[first + k] += tmp_w[j]
        for k in range(first, m):
            cpos[out_c[k]] = -1
        slot[cu] = -1
        start = grp_fill[g]
    return m


@njit(cache=True, nogil=True)
def merge_bucket(rows, cols, w, lo, num_rows, num_coarse, row_count, out_c, out_w):
    """Sort a bucket's triples by (row, col) with two counting passes and sum repeats.

    ``rows`` are coarse row ids in ``[lo, lo + num_rows)``.  Writes the merged
    columns and weights to ``out_c`` / ``out_w`` in CSR order and entries per
    row to ``row_count`` (length ``num_rows``); returns how many were kept.
    """
    m = rows.shape[0]
    col_count = np.zeros(num_coarse + 1, np.int64)
    for j in range(m):
        col_count[cols[j] + 1] += 1
    for c in range(num_coarse):
        col_count[c + 1] += col_count[c]
    by_col_r = np.empty(m, np.int32)
    by_col_c = np.empty(m, np.int32)
    by_col_w = np.empty(m, np.int64)
    for j in range(m):  # pass 1: stable by column
        k = col_count[cols[j]]
        col_count[cols[j]] += 1
        by_col_r[k] = rows[j] - lo
        by_col_c[k] = cols[j]
        by_col_w[k] = w[j]
    fill = np.zeros(num_rows + 1, np.int64)
    for j in range(m):
        fill[by_col_r[j] + 1] += 1
    for r in range(num_rows):
        fill[r + 1] += fill[r]
    sorted_c = np.empty(m, np.int32)
    sorted_w = np.empty(m, np.int64)
    for j in range(m):  # pass 2: stable by row, so (row, col) order
        r = by_col_r[j]
        sorted_c[fill[r]] = by_col_c[j]
        sorted_w[fill[r]] = by_col_w[j]
        fill[r] += 1
    row_count[:] = 0
    kept = 0
    start = 0
    for r in range(num_rows):  # fill[r] is now the end of row r
        prev = -1
        for j in range(start, fill[r]):
            if sorted_c[j] == prev:
                out_w[kept - 1] += sorted_w[j]
            else:
                prev = sorted_c[j]
                out_c[kept] = prev
                out_w[kept] = sorted_w[j]
                kept += 1
                row_count[r] += 1
        start = fill[r]
    return kept


@njit(cache=True, nogil=True)
def group_by_bucket(bounds, rows, cols, w, dst_r, dst_c, dst_w, cut):
    """Stable counting sort of triples by row-range bucket; ``cut[b]:cut[b + 1]`` is bucket ``b``."""
    nb = bounds.shape[0] - 1
    for j in range(rows.shape[0]):
        cut[np.searchsorted(bounds, rows[j], side="right")] += 1
    for b in range(nb):
        cut[b + 1] += cut[b]
    fill = cut[:-1].copy()
    for j in range(rows.shape[0]):
        b = np.searchsorted(bounds, rows[j], side="right") - 1
        dst_r[fill[b]] = rows[j]
        dst_c[fill[b]] = cols[j]
        dst_w[fill[b]] = w[j]
        fill[b] += 1


@njit(cache=True, nogil=True)
def cut_entries(row, ptr, cols, part):
    """Entries of one CSR block whose endpoints lie in different parts."""
    cut = 0
    for i in range(len(ptr) - 1):
        p = part[row + i]
        for j in range(ptr[i], ptr[i + 1]):
            if part[cols[j]] != p:
                cut += 1
    return cut
