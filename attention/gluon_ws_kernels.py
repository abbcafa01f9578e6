"""EXPERIMENT (branch exp/gluon-ws): warp-specialized Hopper (sm_90a) kernel of sageattn_3 (INT8 Q.K, 16-bit
P.V), FA3's structure in Gluon, reading the same quantized buffers as triton_sageattn_kernels.py.

One program = 2 consumer warpgroups x 64 query rows + 1 producer warp:
  producer   TMA loads of the Q tiles once, then K/V tiles into a ring of STAGES buffers; waits for a
             buffer to be released by both consumers before refilling it.
  consumers  each its own 64 rows: Q.K(j+1) and P.V(j) issued back to back as async wgmmas, the softmax
             of block j+1 overlapping P.V(j) (intra-warpgroup overlap); the two consumers share every K/V
             tile (half the loads of two independent programs) and get most of the register file.
"""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import tma, mbarrier, warpgroup_mma, warpgroup_mma_wait


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
def _produce(args):
    (q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bar, k_bar, v_bar, empty_bar,
     qs_ptr, ks_ptr, o_ptr, Lq, Lq_pad, L, Lpad, H, sob, sol, soh, qk_scale) = args
    BM: gl.constexpr = q_desc.block_type.shape[0]
    D: gl.constexpr = q_desc.block_type.shape[1]
    BN: gl.constexpr = k_desc.block_type.shape[0]
    STAGES: gl.constexpr = k_smem.type.shape[0]
    pid_m = gl.program_id(0)
    bh = gl.program_id(1)
    b = bh // H
    h = bh % H
    kv_row = bh * Lpad
    for c in gl.static_range(2):
        mbarrier.expect(q_bar.index(c), q_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(q_desc, [bh * Lq_pad + pid_m * 2 * BM + c * BM, 0], q_bar.index(c),
                                        q_smem.index(c))
    n = Lpad // BN
    for j in range(n):
        st = j % STAGES
        mbarrier.wait(empty_bar.index(st), ((j // STAGES) & 1) ^ 1)
        mbarrier.expect(k_bar.index(st), k_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(k_desc, [kv_row + j * BN, 0], k_bar.index(st), k_smem.index(st))
        mbarrier.expect(v_bar.index(st), v_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(v_desc, [b * L + j * BN, h * D], v_bar.index(st), v_smem.index(st))


@gluon.jit
def _consume(c: gl.constexpr, args):
    (q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bar, k_bar, v_bar, empty_bar,
     qs_ptr, ks_ptr, o_ptr, Lq, Lq_pad, L, Lpad, H, sob, sol, soh, qk_scale) = args
    BM: gl.constexpr = q_desc.block_type.shape[0]
    D: gl.constexpr = q_desc.block_type.shape[1]
    BN: gl.constexpr = k_desc.block_type.shape[0]
    STAGES: gl.constexpr = k_smem.type.shape[0]
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BN, 32])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, D, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
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
    q_row0 = pid_m * 2 * BM + c * BM
    n = Lpad // BN
    q_tile = q_smem.index(c)

    qs = gl.load(qs_ptr + bh * Lq_pad + q_row0 + gl.arange(0, BM, layout=row_s)) * qk_scale
    cols = gl.arange(0, BN, layout=col_s)
    m_i = gl.full([BM], float("-inf"), gl.float32, layout=row_s)
    l_i = gl.zeros([BM], gl.float32, layout=row_s)
    s_zero = gl.zeros([BM, BN], gl.int32, layout=s_layout)

    mbarrier.wait(q_bar.index(c), 0)
    mbarrier.wait(k_bar.index(0), 0)
    s = warpgroup_mma(q_tile, k_smem.index(0).permute((1, 0)), s_zero, use_acc=False, is_async=True)
    s = warpgroup_mma_wait(0, deps=[s])
    ks = gl.load(ks_ptr + kv_row + cols)
    if BN > L:
        p, alpha, m_i, l_i = _softmax(s, ks, qs, m_i, l_i, 0, L, cols, True)
    else:
        p, alpha, m_i, l_i = _softmax(s, ks, qs, m_i, l_i, 0, L, cols, False)
    p_op = gl.convert_layout(p.to(p_dtype), p_layout)
    acc = gl.zeros([BM, D], gl.float32, layout=o_layout)

    for j in range(0, n - 1):
        j1 = j + 1
        st1 = j1 % STAGES
        st = j % STAGES
        mbarrier.wait(k_bar.index(st1), (j1 // STAGES) & 1)
        s_next = warpgroup_mma(q_tile, k_smem.index(st1).permute((1, 0)), s_zero, use_acc=False, is_async=True)
        mbarrier.wait(v_bar.index(st), (j // STAGES) & 1)
        acc = warpgroup_mma(p_op, v_smem.index(st), acc, is_async=True)
        ks = gl.load(ks_ptr + kv_row + j1 * BN + cols)
        s = warpgroup_mma_wait(1, deps=[s_next])                             # Q.K(j+1) done
        if j1 * BN + BN > L:
            p, alpha, m_i, l_i = _softmax(s, ks, qs, m_i, l_i, j1 * BN, L, cols, True)
        else:
            p, alpha, m_i, l_i = _softmax(s, ks, qs, m_i, l_i, j1 * BN, L, cols, False)
        acc, p_op = warpgroup_mma_wait(0, deps=[acc, p_op])                  # P.V(j) done
        mbarrier.arrive(empty_bar.index(st), count=1)                        # K(j), V(j) free for this consumer
        acc = acc * gl.convert_layout(alpha, row_o)[:, None]
        p_op = gl.convert_layout(p.to(p_dtype), p_layout)

    j = n - 1
    st = j % STAGES
    mbarrier.wait(v_bar.index(st), (j // STAGES) & 1)
    acc = warpgroup_mma(p_op, v_smem.index(st), acc, is_async=True)
    acc = warpgroup_mma_wait(0, deps=[acc])
    mbarrier.arrive(empty_bar.index(st), count=1)

    cols_o = gl.arange(0, D, layout=col_o)
    out = acc / gl.convert_layout(l_i, row_o)[:, None]
    offs_m = q_row0 + gl.arange(0, BM, layout=row_o)
    gl.store(o_ptr + b * sob + h * soh + offs_m[:, None] * sol + cols_o[None, :],
             out.to(o_ptr.dtype.element_ty), mask=(offs_m < Lq)[:, None])


@gluon.jit
def _consume0(args):
    _consume(0, args)


@gluon.jit
def _consume1(args):
    _consume(1, args)


@gluon.jit
def attn_int8_ws_kernel(q_desc, qs_ptr, k_desc, ks_ptr, v_desc, o_ptr, Lq, Lq_pad, L, Lpad, H,
                        sob, sol, soh, qk_scale,
                        D: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr, STAGES: gl.constexpr,
                        CONSUMER_REGS: gl.constexpr):
    """One program: query rows [pid*2*BM, +2*BM) of one (batch, head); Lq_pad a multiple of 2*BM, Lpad of BN."""
    q_smem = gl.allocate_shared_memory(gl.int8, [2, BM, D], q_desc.layout)
    k_smem = gl.allocate_shared_memory(gl.int8, [STAGES, BN, D], k_desc.layout)
    v_smem = gl.allocate_shared_memory(v_desc.dtype, [STAGES, BN, D], v_desc.layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    k_bar = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_bar = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty_bar = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(2):
        mbarrier.init(q_bar.index(i), count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_bar.index(i), count=1)
        mbarrier.init(v_bar.index(i), count=1)
        mbarrier.init(empty_bar.index(i), count=2)                          # both consumers release

    args = (q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bar, k_bar, v_bar, empty_bar,
            qs_ptr, ks_ptr, o_ptr, Lq, Lq_pad, L, Lpad, H, sob, sol, soh, qk_scale)
    gl.warp_specialize([(_consume0, (args,)), (_consume1, (args,)), (_produce, (args,))],
                       [4, 1], [CONSUMER_REGS, 24])
