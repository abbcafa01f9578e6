"""Hopper (sm_90a) Gluon kernel behind gluon_sageattn.py: the sageattn_3 / sageattn_3_fp8 numerics of
triton_sageattn_kernels.py (same quantized inputs and layouts), scheduled by hand.

Triton's dot waits for every wgmma right after issuing it, so the tensor cores idle while the softmax
runs. Here the wgmmas are async and waited for explicitly (FA3's intra-warpgroup overlap): Q.K of the next
key block and P.V of this one are issued back to back, the next block's softmax runs while P.V is in
flight, and K/V tiles stream through an mbarrier ring of STAGES buffers filled by TMA. Every wgmma is
waited for inside its own iteration (ptxas serializes wgmmas whose wait crosses the loop back edge).
One warpgroup per program (num_warps=4, BM=64): only one warpgroup reads a buffer before TMA refills it."""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import tma, mbarrier, warpgroup_mma, warpgroup_mma_wait, \
    warpgroup_mma_init

FP8_MAX = gl.constexpr(448.0)


@gluon.jit
def _issue(desc, row, col, bar, smem):
    mbarrier.expect(bar, desc.block_type.nbytes)
    tma.async_copy_global_to_shared(desc, [row, col], bar, smem)


@gluon.jit
def _load_v(v_desc, j, bh, b, h, L, v_bar, v_smem, D: gl.constexpr, BN: gl.constexpr, STAGES: gl.constexpr,
            PV_FP8: gl.constexpr):
    st = j % STAGES
    if PV_FP8:
        _issue(v_desc, bh * D, j * BN, v_bar.index(st), v_smem.index(st))
    else:
        _issue(v_desc, b * L + j * BN, h * D, v_bar.index(st), v_smem.index(st))


@gluon.jit
def _softmax(s, ks, qs, m_i, l_i, col0, L, cols, MASK: gl.constexpr):
    x = s.to(gl.float32) * ks[None, :]
    if MASK:
        x = gl.where((col0 + cols)[None, :] < L, x, float("-inf"))
    m_new = gl.maximum(m_i, gl.max(x, axis=1) * qs)
    p = gl.exp2(x * qs[:, None] - m_new[:, None])
    alpha = gl.exp2(m_i - m_new)
    l_i = l_i * alpha + gl.sum(p, axis=1)
    return p, alpha, m_new, l_i


@gluon.jit
def _p_operand(p, p_layout: gl.constexpr, dtype: gl.constexpr, PV_FP8: gl.constexpr):
    if PV_FP8:
        return gl.convert_layout((p * FP8_MAX).to(dtype), p_layout)
    else:
        return gl.convert_layout(p.to(dtype), p_layout)


@gluon.jit
def _v_operand(v_smem, st, PV_FP8: gl.constexpr):
    if PV_FP8:
        return v_smem.index(st).permute((1, 0))      # V^T tile [D, BN] -> [BN, D], K-major for e4m3
    else:
        return v_smem.index(st)                       # [BN, D] 16-bit, MN-major B operand


@gluon.jit
def attn_int8_wgmma_kernel(q_desc, qs_ptr, k_desc, ks_ptr, v_desc, vs_ptr, o_ptr, Lq, Lq_pad, L, Lpad, H,
                           sob, sol, soh, qk_scale,
                           D: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr, PV_FP8: gl.constexpr,
                           STAGES: gl.constexpr, num_warps: gl.constexpr, KS_AHEAD: gl.constexpr = True):
    PV_K: gl.constexpr = 32 if PV_FP8 else 16
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, BN, 32])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, D, PV_K])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=4 if PV_FP8 else 2)
    row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    col_s: gl.constexpr = gl.SliceLayout(0, s_layout)
    row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    col_o: gl.constexpr = gl.SliceLayout(0, o_layout)
    p_dtype: gl.constexpr = v_desc.dtype

    pid_m = gl.program_id(0)
    bh = gl.program_id(1)
    b = bh // H
    h = bh % H
    kv_row = bh * Lpad
    q_row = bh * Lq_pad + pid_m * BM
    n = Lpad // BN

    q_smem = gl.allocate_shared_memory(gl.int8, [BM, D], q_desc.layout)
    k_smem = gl.allocate_shared_memory(gl.int8, [STAGES, BN, D], k_desc.layout)
    v_smem = gl.allocate_shared_memory(v_desc.dtype, [STAGES] + v_desc.block_type.shape, v_desc.layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    k_bar = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_bar = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_bar.index(i), count=1)
        mbarrier.init(v_bar.index(i), count=1)

    _issue(q_desc, q_row, 0, q_bar, q_smem)
    for i in gl.static_range(STAGES):
        if i < n:
            _issue(k_desc, kv_row + i * BN, 0, k_bar.index(i), k_smem.index(i))
    for i in gl.static_range(STAGES):
        if i < n:
            _load_v(v_desc, i, bh, b, h, L, v_bar, v_smem, D, BN, STAGES, PV_FP8)

    qs = gl.load(qs_ptr + q_row + gl.arange(0, BM, layout=row_s)) * qk_scale
    cols = gl.arange(0, BN, layout=col_s)
    m_i = gl.full([BM], float("-inf"), gl.float32, layout=row_s)
    l_i = gl.zeros([BM], gl.float32, layout=row_s)
    s_zero = gl.zeros([BM, BN], gl.int32, layout=s_layout)

    mbarrier.wait(q_bar, 0)
    mbarrier.wait(k_bar.index(0), 0)
    s = warpgroup_mma(q_smem, k_smem.index(0).permute((1, 0)), s_zero, use_acc=False, is_async=True)
    s = warpgroup_mma_wait(0, deps=[s])
    if STAGES < n:
        _issue(k_desc, kv_row + STAGES * BN, 0, k_bar.index(0), k_smem.index(0))
    ks = gl.load(ks_ptr + kv_row + cols)
    if BN > L:
        p, alpha, m_i, l_i = _softmax(s, ks, qs, m_i, l_i, 0, L, cols, True)
    else:
        p, alpha, m_i, l_i = _softmax(s, ks, qs, m_i, l_i, 0, L, cols, False)
    p_op = _p_operand(p, p_layout, p_dtype, PV_FP8)
    acc = gl.zeros([BM, D], gl.float32, layout=o_layout)
    ks_next = gl.load(ks_ptr + kv_row + BN + cols, mask=BN + cols < Lpad, other=1.0)

    # Block j: Q.K(j+1) and P.V(j) go to the tensor cores back to back; the softmax of block j+1 then
    # runs while P.V(j) is still in flight. Every wgmma is waited for inside its iteration.
    for j in range(0, n - 1):
        j1 = j + 1
        st1 = j1 % STAGES
        st = j % STAGES
        mbarrier.wait(k_bar.index(st1), (j1 // STAGES) & 1)
        s_next = warpgroup_mma(q_smem, k_smem.index(st1).permute((1, 0)), s_zero, use_acc=False, is_async=True)
        mbarrier.wait(v_bar.index(st), (j // STAGES) & 1)
        acc = warpgroup_mma(p_op, _v_operand(v_smem, st, PV_FP8), acc, is_async=True)
        if KS_AHEAD:   # loaded one iteration earlier: the load's latency spans a whole block
            ks = ks_next
            nxt = (j1 + 1) * BN + cols
            ks_next = gl.load(ks_ptr + kv_row + nxt, mask=nxt < Lpad, other=1.0)
        else:
            ks = gl.load(ks_ptr + kv_row + j1 * BN + cols)
        s = warpgroup_mma_wait(1, deps=[s_next])                             # Q.K(j+1) done
        if j1 + STAGES < n:
            _issue(k_desc, kv_row + (j1 + STAGES) * BN, 0, k_bar.index(st1), k_smem.index(st1))
        if j1 * BN + BN > L:
            p, alpha, m_i, l_i = _softmax(s, ks, qs, m_i, l_i, j1 * BN, L, cols, True)
        else:
            p, alpha, m_i, l_i = _softmax(s, ks, qs, m_i, l_i, j1 * BN, L, cols, False)
        if PV_FP8:   # the wait cannot carry 8-bit register operands; PTX keeps P's registers alive
            acc = warpgroup_mma_wait(0, deps=[acc])                          # P.V(j) done
        else:
            acc, p_op = warpgroup_mma_wait(0, deps=[acc, p_op])
        if j + STAGES < n:
            _load_v(v_desc, j + STAGES, bh, b, h, L, v_bar, v_smem, D, BN, STAGES, PV_FP8)
        acc = acc * gl.convert_layout(alpha, row_o)[:, None]
        p_op = _p_operand(p, p_layout, p_dtype, PV_FP8)

    j = n - 1
    st = j % STAGES
    mbarrier.wait(v_bar.index(st), (j // STAGES) & 1)
    acc = warpgroup_mma(p_op, _v_operand(v_smem, st, PV_FP8), acc, is_async=True)
    acc = warpgroup_mma_wait(0, deps=[acc])

    mbarrier.invalidate(q_bar)
    for i in gl.static_range(STAGES):
        mbarrier.invalidate(k_bar.index(i))
        mbarrier.invalidate(v_bar.index(i))

    cols_o = gl.arange(0, D, layout=col_o)
    out = acc / gl.convert_layout(l_i, row_o)[:, None]
    if PV_FP8:
        vs = gl.load(vs_ptr + bh * D + cols_o) * (1.0 / FP8_MAX)
        out = out * vs[None, :]
    offs_m = pid_m * BM + gl.arange(0, BM, layout=row_o)
    gl.store(o_ptr + b * sob + h * soh + offs_m[:, None] * sol + cols_o[None, :],
             out.to(o_ptr.dtype.element_ty), mask=(offs_m < Lq)[:, None])
