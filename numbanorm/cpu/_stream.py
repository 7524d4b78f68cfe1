"""Streaming (non-temporal) stores for forward outputs too large to stay in cache.

A plain store first reads the line it writes into the cache (a "read for
ownership"), so writing ``y`` costs as much memory traffic as reading ``x``.
When ``y`` is larger than the last-level cache it will not be read from the
cache anyway: a kernel then computes a row into a small buffer that stays in
L1 and copies it out with non-temporal stores (:func:`stream_row`), which go
straight to memory without the read. Work items end with :func:`store_fence`,
as such stores are not ordered with the ones other threads read after the kernel.

Outputs that fit in the cache keep plain stores (:func:`streams`): the next op
reads them from there.

Used by the row-wise forward, the channels-last forwards (batch norm's second
pass, instance / group norm per sample) and spectral norm's ``w / sigma``.
Measured by paired A/B in one process (float32, 2**25 elements): layer norm
forward 0.76-0.96x the time of plain stores, channels-last batch / instance /
group norm forwards 0.84-0.95x, spectral norm forward 0.93x.
Not used where it did not pay: the backwards' dx (0.93-1.05x) and batch norm's
channels-first runs (0.75-1.2x, with the machine's phase).
"""
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from .._bench import last_level_cache

# Outputs of at least this many bytes are written with streaming stores (module
# level, so that tests can lower it and take the streaming paths on small data).
STREAM_FROM_BYTES = (last_level_cache() or (3, 32 << 20))[1]


def streams(out):
    """Whether a kernel should write ``out`` with :func:`stream_row` (it is larger than the cache)."""
    return out.nbytes >= STREAM_FROM_BYTES


@intrinsic
def stream_row(typingctx, src, dst):
    """``dst[:] = src`` for C-contiguous 1-d arrays of one dtype: 64-byte vector stores marked
    non-temporal for the aligned body of ``dst``, plain stores for its ends."""
    if not (isinstance(src, types.Array) and isinstance(dst, types.Array) and src.dtype == dst.dtype
            and src.ndim == dst.ndim == 1 and src.layout == dst.layout == "C" and dst.aligned):
        # (an unaligned dst could leave the body's 64-byte stores misaligned: a fault, not a slow path)
        return None

    def codegen(context, builder, signature, args):
        src_type, dst_type = signature.args
        source = context.make_array(src_type)(context, builder, args[0])
        target = context.make_array(dst_type)(context, builder, args[1])
        itemsize = context.get_abi_sizeof(context.get_data_type(dst_type.dtype))
        lanes = max(1, 64 // itemsize)
        vector = ir.VectorType(context.get_data_type(dst_type.dtype), lanes).as_pointer()
        i64 = ir.IntType(64)
        const = lambda v: ir.Constant(i64, v)  # noqa: E731
        n = target.nitems
        # Elements before the first 64-byte boundary of dst, at most n.
        misaligned = builder.and_(builder.ptrtoint(target.data, i64), const(63))
        head = builder.udiv(builder.and_(builder.sub(const(64), misaligned), const(63)), const(itemsize))
        head = builder.select(builder.icmp_unsigned("<", n, head), n, head)
        body_end = builder.add(head, builder.mul(builder.udiv(builder.sub(n, head), const(lanes)), const(lanes)))

        def copy_scalars(start, stop):
            with cgutils.for_range_slice(builder, start, stop, const(1), intp=i64) as (i, _):
                builder.store(builder.load(builder.gep(source.data, [i])), builder.gep(target.data, [i]))

        copy_scalars(const(0), head)
        nontemporal = builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)])
        with cgutils.for_range_slice(builder, head, body_end, const(lanes), intp=i64) as (i, _):
            value = builder.load(builder.bitcast(builder.gep(source.data, [i]), vector), align=itemsize)
            store = builder.store(value, builder.bitcast(builder.gep(target.data, [i]), vector), align=64)
            store.set_metadata("nontemporal", nontemporal)
        copy_scalars(body_end, n)
        return context.get_dummy_value()

    return types.void(src, dst), codegen


@intrinsic
def store_fence(typingctx):
    """A full memory fence: orders a work item's streaming stores before what follows
    (``mfence`` on x86, ``dmb`` on ARM)."""
    def codegen(context, builder, signature, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()

    return types.void(), codegen
