"""The compiled CPU kernel for the delta, post-tanh delta and Oja recurrences.

``recurrence.cpp`` (next to this file) runs the rank-one recurrence of
:mod:`fwplab.solvers` for any fixed-grid tableau with up to four stages, forward
and one hand-written backward, checkpointing the fast weights every ``K`` steps
and recomputing the steps in between, with the batch split across threads
(``torch.get_num_threads()``: PyTorch's own OpenMP threads when it builds with
``-fopenmp``, :func:`uses_openmp`; threads of its own otherwise), in groups of
:func:`lanes` recurrences, one vector register. It applies the controls' activations
itself and reads controls that are column slices of one array in place (:func:`row_operands`: the
slow net's joint key-and-rate projection), returning that array's gradient in one
piece. It is plain C++ without intrinsics (compiled with ``-O3`` and the host's own
instruction set, ``-march=native`` / ``-mcpu=native``, so it also builds on ARM
laptops; the dense loops use GCC/Clang vector types), has no dependency on PyTorch
headers and is called through ``ctypes`` with the
tensors' data pointers. Hebb rules need no kernel: they have no time loop.
The build compiles this one file only (about 15 s on two idle cores).

The same kernel can also compute the controls itself (:class:`FusedKernelRecurrence`,
the models' solver ``"fused"``): given the path's pieces and the slow net's weights
(:class:`FusedSlowNet`: input projection, LayerNorm, joint and value projections), each
thread evaluates the path and the slow net at the stage points of one segment of ``K``
steps for its group's series, runs the segment, and moves on, so the controls never
leave the cache and are never stored; the backward recomputes a segment's controls,
walks it in reverse and backpropagates into the slow net's weights (per-thread sums,
added up at the end). Its row-major products keep a tile of up to 6 rows x 4 vectors in
registers.

It is compiled on first use with the system's C++ compiler (:mod:`fwplab.kernels.build`:
``$CXX`` or ``c++``/``g++``/``clang++``; no ``ninja``, no PyTorch headers) into a folder of
``$FWPLAB_KERNEL_CACHE`` (default ``~/.cache/fwplab/kernels``) named by a hash of the
source, the compiler, the flags, the torch and Python versions and the CPU
(:func:`cache_directory`), saying so once on stderr with the time it took, and reused
afterwards; a library is loaded only after its size and sha256 match the manifest written
beside it after a complete build. Where no compiler is present or the build fails,
:func:`available` warns once (one line) and returns ``False``, and the models fall back to
the pure-PyTorch fast path. ``FWPLAB_KERNEL=0`` turns the kernel off: nothing is built,
loaded or locked (:func:`load` refuses in one line). :func:`prepare` builds it before a
progress bar or a timer starts.
"""

from __future__ import annotations

import ctypes
import os
import time
import warnings
from itertools import pairwise
from pathlib import Path
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from . import build

__all__ = [
    "SOURCE",
    "available",
    "build_seconds",
    "cache_directory",
    "enabled",
    "load",
    "prepare",
    "supports",
    "supports_rule",
    "FusedKernelRecurrence",
    "FusedSlowNet",
    "KernelRecurrence",
    "PathPieces",
    "RowOperand",
    "fused_recurrence",
    "fuses_heads",
    "lanes",
    "recurrence",
    "uses_openmp",
    "row_operands",
]

#: The C++ source of the kernel.
SOURCE = Path(__file__).with_name("recurrence.cpp")
_NONLINEARITY_CODES = {"linear": 0, "tanh": 1, "softmax": 2}
_ACTIVATION_CODES = {"identity": 0, "tanh": 1, "softmax": 2, "sigmoid": 3}
_MAX_STAGES = 4


class _Build:
    """The process-wide state of the kernel: loaded library, or why it is unavailable."""

    library: Optional[ctypes.CDLL] = None
    error: Optional[str] = None
    warned = False
    seconds: Optional[float] = None


def enabled() -> bool:
    """Whether the kernel may be built and run (``FWPLAB_KERNEL`` is not ``0``)."""
    return os.environ.get("FWPLAB_KERNEL", "1").strip() != "0"


def supports(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the kernel runs tensors on ``device`` with ``dtype`` (CPU, float32/float64)."""
    return torch.device(device).type == "cpu" and dtype in (torch.float32, torch.float64)


def supports_rule(nonlinearity: str, activations: tuple[str, str, str]) -> bool:
    """Whether the kernel's tables hold a recurrence's nonlinearity and activations.

    Args:
        nonlinearity: ``g`` of :mod:`fwplab.solvers` (``"linear"``, ``"tanh"``, ``"softmax"``).
        activations: of the fixed factor, the target and the rate.
    """
    return nonlinearity in _NONLINEARITY_CODES and all(a in _ACTIVATION_CODES
                                                       for a in activations)


def cache_directory() -> Path:
    """The cache folder of this kernel's build (:func:`fwplab.kernels.build.library_directory`).

    Raises:
        RuntimeError: no C++ compiler is found.
    """
    return build.library_directory(SOURCE, _label())


def _label() -> str:
    """The torch version's part of the build key (the library runs on PyTorch's OpenMP)."""
    return f"torch{torch.__version__}"


#: The one line :func:`load` gives when ``FWPLAB_KERNEL=0``.
TURNED_OFF = ("fwplab kernel: turned off by FWPLAB_KERNEL=0; unset it to run solver 'kernel' "
              "or 'fused', or use solver 'fast'")


def load() -> ctypes.CDLL:
    """Build (first call on this machine only) and load the kernel library.

    Returns:
        The loaded library.

    Raises:
        RuntimeError: one line: the kernel is turned off (``FWPLAB_KERNEL=0``), or why it
            could not be built or loaded.
    """
    if not enabled():
        raise RuntimeError(TURNED_OFF)
    if _Build.library is not None:
        return _Build.library
    if _Build.error is not None:
        raise RuntimeError(_Build.error)
    started = time.perf_counter()
    try:
        library = ctypes.CDLL(str(build.cached_library(SOURCE, _label())))
        _declare(library)
    except (RuntimeError, OSError, AttributeError) as error:  # no compiler, failed build, load
        _Build.error = "fwplab kernel: " + " ".join(str(error).split())[:400]
        raise RuntimeError(_Build.error) from None
    _Build.library = library
    _Build.seconds = time.perf_counter() - started
    return library


def available() -> bool:
    """Whether the kernel runs: turned on, builds and loads; warns once (one line) when
    it is turned on but does not build or load. ``FWPLAB_KERNEL=0``: ``False``, touching
    nothing."""
    if not enabled():
        return False
    try:
        load()
    except RuntimeError as error:
        if not _Build.warned:
            _Build.warned = True
            warnings.warn(f"{error}; using the pure-PyTorch fast path instead",
                          RuntimeWarning, stacklevel=2)
        return False
    return True


def prepare(model: torch.nn.Module) -> bool:
    """Build or load the kernel now if ``model`` would run it, so that its first step does
    not include the compile: call it before a progress bar or a timer starts.

    Args:
        model: any module; its submodules with a ``selected_solver()`` method (the FWP
            models) are asked which solver they run on their parameters' device and dtype.

    Returns:
        Whether one of them runs the kernel (``"kernel"`` or ``"fused"``).
    """
    return any(module.selected_solver() in ("kernel", "fused") for module in model.modules()
               if callable(getattr(module, "selected_solver", None)))


def build_seconds() -> Optional[float]:
    """Seconds the first :func:`load` of this process took (build or verified cache hit)."""
    return _Build.seconds


def _declare(library: ctypes.CDLL) -> None:
    pointer, integer = ctypes.c_void_p, ctypes.c_int64
    for suffix in ("f32", "f64"):
        forward = getattr(library, f"fwplab_forward_{suffix}")
        forward.argtypes = [pointer] * 11 + [integer] * 8 + [pointer] * 2 + [integer]
        forward.restype = ctypes.c_int
        backward = getattr(library, f"fwplab_backward_{suffix}")
        backward.argtypes = [pointer] * 10 + [integer] * 8 + [pointer] * 6 + [integer]
        backward.restype = ctypes.c_int
        fused_forward = getattr(library, f"fwplab_fused_forward_{suffix}")
        fused_forward.argtypes = ([pointer] * 2 + [ctypes.c_double] + [pointer] * 7
                                  + [integer] * 8 + [pointer] * 2 + [integer])
        fused_forward.restype = ctypes.c_int
        fused_backward = getattr(library, f"fwplab_fused_backward_{suffix}")
        fused_backward.argtypes = ([pointer] * 2 + [ctypes.c_double] + [pointer] * 6
                                   + [integer] * 8 + [pointer] * 4 + [integer])
        fused_backward.restype = ctypes.c_int
        getattr(library, f"fwplab_lanes_{suffix}").restype = ctypes.c_int64
    library.fwplab_openmp.restype = ctypes.c_int64


def _address(tensor: Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(tensor.data_ptr())


def _entry(name: str, dtype: torch.dtype):
    """The library's entry point ``fwplab_<name>_f32`` or ``_f64`` for ``dtype``."""
    return getattr(load(), f"fwplab_{name}_{'f64' if dtype == torch.float64 else 'f32'}")


def _check_stages(spec) -> None:
    if len(spec.tableau.c) > _MAX_STAGES:
        raise ValueError(f"method: the kernel supports up to {_MAX_STAGES} stages, "
                         f"got {len(spec.tableau.c)}")


def _states(M0: Tensor, steps: Tensor, spec) -> tuple[Tensor, Tensor]:
    """Room for the kept states and the checkpoints, ``(kept or checkpoints, N, d_out, d_in)``."""
    return (M0.new_empty(len(spec.keep), *M0.shape),
            M0.new_empty(steps.shape[0] // spec.checkpoint_every + 1, *M0.shape))


def _tables(spec, activations, steps: Tensor,
            strides: Optional[tuple[int, ...]] = None) -> tuple[Tensor, ...]:
    """The non-tensor arguments as contiguous CPU arrays the C entry points read (the
    controls' row strides last, for the unfused entry points)."""
    stages = len(spec.tableau.c)
    a = torch.zeros(stages, stages, dtype=torch.float64)
    for i, row in enumerate(spec.tableau.a):
        for j, a_ij in enumerate(row):
            a[i, j] = a_ij
    b = torch.tensor(spec.tableau.b, dtype=torch.float64)
    offsets = torch.tensor(spec.layout.offsets, dtype=torch.int64)
    keep_position = torch.full((steps.shape[0] + 1,), -1, dtype=torch.int64)
    keep_position[torch.tensor(spec.keep, dtype=torch.int64)] = torch.arange(len(spec.keep))
    codes = torch.tensor([_ACTIVATION_CODES[name] for name in activations], dtype=torch.int64)
    tables = (steps.detach().to(torch.float64).contiguous(), a, b, offsets, keep_position, codes)
    return tables if strides is None else (*tables, torch.tensor(strides, dtype=torch.int64))


def _sizes(spec, steps: Tensor, flat: int, d_out: int, d_in: int) -> tuple[int, ...]:
    """The integer arguments shared by both entry points."""
    return (steps.shape[0], len(spec.tableau.c), spec.layout.per_step, flat, d_out, d_in,
            _NONLINEARITY_CODES[spec.nonlinearity], spec.checkpoint_every)


_STATUS = {1: "out of memory", 2: "unsupported stage count",
           3: "heads do not divide the lanes, or bad padding"}


def _check(status: int, what: str) -> None:
    if status != 0:
        raise RuntimeError(f"fwplab kernel {what} failed (status {status}: {_STATUS[status]})")


class RowOperand(NamedTuple):
    """Where the rows of one control lie in one of the arrays handed to the kernel.

    Row ``r = point * flat + recurrence`` starts at element ``offset + r * stride`` of
    ``arrays[array]``; the gradient lies at the same place in that array's gradient.
    """

    array: int
    offset: int
    stride: int


def row_operands(controls: tuple[Tensor, ...]) -> tuple[tuple[Tensor, ...], tuple[RowOperand, ...]]:
    """The arrays the kernel reads ``controls`` from, without copies where possible.

    A control that is a column slice of a contiguous array (as the slow net's joint
    key-and-rate projection produces them) is read in place from that array, which
    then also receives its gradient in one piece; any other control is made contiguous.

    Args:
        controls: ``(points, flat, width)`` each.

    Returns:
        The distinct arrays and one :class:`RowOperand` per control.
    """
    arrays: list[Tensor] = []
    operands = []
    for x in controls:
        points, flat, width = x.shape
        base, stride = x._base, x.stride(1)
        offset = None if base is None else x.storage_offset() - base.storage_offset()
        in_place = (base is not None and base.is_contiguous() and base.dtype == x.dtype
                    and base.numel() == points * flat * stride and x.stride(0) == flat * stride
                    and (width == 1 or x.stride(2) == 1) and 0 <= offset
                    and offset + width <= stride)
        if not in_place:
            base, offset, stride = x.contiguous(), 0, width
        index = next((i for i, seen in enumerate(arrays) if seen is base), len(arrays))
        if index == len(arrays):
            arrays.append(base)
        operands.append(RowOperand(index, offset, stride))
    return tuple(arrays), tuple(operands)


def _covers_rows(operands: tuple[RowOperand, ...], widths: tuple[int, ...], array: int) -> bool:
    """Whether the controls read from ``arrays[array]`` tile its rows exactly."""
    spans = sorted((o.offset, o.offset + w) for o, w in zip(operands, widths, strict=True)
                   if o.array == array)
    stride = next(o.stride for o in operands if o.array == array)
    return spans[0][0] == 0 and spans[-1][1] == stride and all(
        end == start for (_, end), (start, _) in pairwise(spans))


class KernelRecurrence(torch.autograd.Function):
    """The recurrence of :class:`fwplab.solvers._FastRecurrence`, run by the compiled kernel.

    Inputs: ``M0 (N, d_out, d_in)`` (contiguous CPU float32 or float64), ``steps
    (steps,)``, a :class:`fwplab.solvers.RecurrenceSpec` whose ``checkpoint_every`` is
    set, ``activations``: the names (``"identity"``, ``"tanh"``, ``"softmax"`` over the
    last dimension, ``"sigmoid"``) of the activations of the fixed factor, the target
    and the rate, which the kernel applies; then ``operands`` and ``*arrays`` from
    :func:`row_operands` of the raw controls ``fixed (points, N, d_in)``, ``target
    (points, N, d_out)`` and ``rate (points, N, 1)`` (contiguous, of ``M0``'s dtype).
    Returns ``M`` at the kept grid indices, ``(len(keep), N, d_out, d_in)``; the
    gradients go to ``M0`` and the arrays.
    """

    @staticmethod
    def forward(ctx, M0, steps, spec, activations, operands, *arrays):
        load()  # a failed build is the error to report first
        tensors = (*arrays, M0)
        if not all(supports(t.device, t.dtype) and t.dtype == M0.dtype and t.is_contiguous()
                   for t in tensors):
            raise ValueError("the kernel takes contiguous CPU tensors of one dtype, float32 or "
                             f"float64; got {[(t.dtype, t.device.type) for t in tensors]}")
        _check_stages(spec)
        flat, d_out, d_in = M0.shape
        kept, checkpoints = _states(M0, steps, spec)
        entry = _entry("forward", M0.dtype)
        tables = _tables(spec, activations, steps, tuple(o.stride for o in operands))
        status = entry(*_operand_addresses(arrays, operands), _address(M0),
                       *(_address(t) for t in tables), *_sizes(spec, steps, flat, d_out, d_in),
                       _address(kept), _address(checkpoints), torch.get_num_threads())
        _check(status, "forward")
        ctx.save_for_backward(steps, checkpoints, *arrays)
        ctx.spec, ctx.activations, ctx.operands = spec, activations, operands
        return kept

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_kept):
        steps, checkpoints, *arrays = ctx.saved_tensors
        spec, operands = ctx.spec, ctx.operands
        flat, d_out, d_in = checkpoints.shape[1:]
        widths = (d_in, d_out, 1)
        grad_arrays = [torch.empty_like(a) if _covers_rows(operands, widths, i)
                       else torch.zeros_like(a) for i, a in enumerate(arrays)]
        grad_M0 = torch.empty_like(checkpoints[0])
        grad_kept = grad_kept.contiguous()
        entry = _entry("backward", checkpoints.dtype)
        tables = _tables(spec, ctx.activations, steps, tuple(o.stride for o in operands))
        status = entry(*_operand_addresses(arrays, operands), *(_address(t) for t in tables),
                       *_sizes(spec, steps, flat, d_out, d_in), _address(checkpoints),
                       _address(grad_kept), *_operand_addresses(grad_arrays, operands),
                       _address(grad_M0), torch.get_num_threads())
        _check(status, "backward")
        return (grad_M0, None, None, None, None, *grad_arrays)


def recurrence(fixed: Tensor, target: Tensor, rate: Tensor, M0: Tensor, steps: Tensor, spec,
               activations: tuple[str, str, str]) -> Tensor:
    """Run :class:`KernelRecurrence` on raw controls, reading column slices in place.

    Args:
        fixed, target, rate: raw controls ``(points, N, d_in)``, ``(points, N, d_out)``,
            ``(points, N, 1)``; each contiguous or a column slice of a contiguous array.
        M0, steps, spec, activations: as :class:`KernelRecurrence`.

    Returns:
        ``(len(keep), N, d_out, d_in)``.
    """
    arrays, operands = row_operands((fixed, target, rate))
    return KernelRecurrence.apply(M0.contiguous(), steps, spec, activations, operands, *arrays)


def _operand_addresses(arrays, operands) -> list[ctypes.c_void_p]:
    return [ctypes.c_void_p(arrays[o.array].data_ptr() + o.offset * arrays[o.array].element_size())
            for o in operands]


# --------------------------------------------------------------- the fused slow net


def lanes(dtype: torch.dtype) -> int:
    """Recurrences the built kernel runs side by side in one group: one vector register
    of ``dtype`` on this CPU (16 float32 with AVX-512, 8 with AVX2, 4 with SSE or NEON).

    Raises:
        RuntimeError: the kernel does not build (see :func:`load`).
        ValueError: ``dtype`` is not float32 or float64.
    """
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype: the kernel runs float32 and float64, got {dtype}")
    return int(_entry("lanes", dtype)())


def uses_openmp() -> bool:
    """Whether the built kernel runs its threads as OpenMP threads (PyTorch's, where
    PyTorch uses the same OpenMP runtime) rather than threads of its own."""
    return bool(load().fwplab_openmp())


def fuses_heads(heads: int, dtype: torch.dtype) -> bool:
    """Whether the fused kernel runs ``heads`` heads in ``dtype``: it builds, and the heads
    divide its lanes (:func:`lanes`), so a group of recurrences holds whole series."""
    return (dtype in (torch.float32, torch.float64) and available()
            and lanes(dtype) % heads == 0)


class PathPieces(NamedTuple):
    """A control path as the fused kernel reads it: piecewise polynomials in time.

    Attributes:
        kind: ``"cubic"`` (``coefficients (batch, pieces, 4 C)``: ``a, b, 2c, 3d`` of
            ``X = a + b s + c s^2 + d s^3``, torchcde's packing) or ``"linear"``
            (``coefficients (batch, pieces + 1, C)`` the knot values, ``slopes (batch,
            pieces, C)``: ``X = x_i + slope_i s``).
        coefficients, slopes: as above (``slopes`` ``None`` for ``"cubic"``).
        piece: the piece of each stage point ``(points,)``, int64.
        offset: ``s``, the time since the piece's start ``(points,)``.
    """

    kind: str
    coefficients: Tensor
    slopes: Optional[Tensor]
    piece: Tensor
    offset: Tensor


class FusedSlowNet(NamedTuple):
    """The slow net the fused kernel evaluates at every stage point, inside the time loop::

        u = LN(A in_1 + a)     in_1 = X or dX/dt         (feature_input)
        j = B u + b            keys and rates, or keys, values and rates
        v = V in_2 + e         in_2 = X or dX/dt, CDE values (value_input; None: in j)

    Attributes:
        feature_input, value_input: ``"x"`` or ``"dx"``; ``value_input`` ``None`` when
            the values are columns of ``j`` (the ODE driver).
        in_weight ``(H, C)``, in_bias ``(H,)``, norm_weight, norm_bias ``(H,)``, eps:
            ``A``, ``a`` and the LayerNorm.
        joint_weight ``(J, H)``, joint_bias ``(J,)``: ``B``, ``b``.
        value_weight ``(H, C)``, value_bias ``(H,)``: ``V``, ``e`` (``None`` without).
        key, value, rate: where each control lies: ``(array, column, head_stride)``,
            array 0 for ``j`` and 1 for ``v``; head ``h``'s control starts at column
            ``column + h * head_stride`` of the array's row.
        heads: number of heads.
    """

    feature_input: str
    value_input: Optional[str]
    in_weight: Tensor
    in_bias: Tensor
    norm_weight: Tensor
    norm_bias: Tensor
    eps: float
    joint_weight: Tensor
    joint_bias: Tensor
    value_weight: Optional[Tensor]
    value_bias: Optional[Tensor]
    key: tuple[int, int, int]
    value: tuple[int, int, int]
    rate: tuple[int, int, int]
    heads: int

    def parameters(self) -> tuple[Tensor, ...]:
        """The tensors the kernel differentiates, in its order."""
        tensors = (self.in_weight, self.in_bias, self.norm_weight, self.norm_bias,
                   self.joint_weight, self.joint_bias)
        if self.value_input is None:
            return tensors
        return (*tensors, self.value_weight, self.value_bias)


_INPUT_CODES = {"x": 0, "dx": 1}
_PATH_CODES = {"cubic": 0, "linear": 1}


def _padded(x: Tensor, width: int) -> Tensor:
    """``x (..., n)`` with zero columns up to ``width``, contiguous."""
    out = x.new_zeros(*x.shape[:-1], width)
    out[..., :x.shape[-1]] = x
    return out


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


class _FusedOperands(NamedTuple):
    """The arrays and sizes of the fused entry points (their order is the kernel's)."""

    tensors: tuple[Optional[Tensor], ...]
    sizes: Tensor
    hidden_pad: int
    joint_pad: int


def _fused_operands(net: FusedSlowNet, path: PathPieces, controls) -> _FusedOperands:
    """Transposed, zero-padded weights and the size table the kernel reads."""
    dtype = net.in_weight.dtype
    width = lanes(dtype)
    H, C = net.in_weight.shape
    J = net.joint_weight.shape[0]
    Hp, Jp = _round_up(H, width), _round_up(J, width)
    with torch.no_grad():
        value = net.value_input is not None
        tensors = (
            path.coefficients.contiguous(),
            None if path.slopes is None else path.slopes.contiguous(),
            path.piece.to(torch.int64).contiguous(),
            path.offset.to(dtype).contiguous(),
            _padded(net.in_weight.t(), Hp), _padded(net.in_bias, Hp),
            _padded(net.norm_weight, Hp), _padded(net.norm_bias, Hp),
            _padded(net.joint_weight.t(), Jp), _padded(net.joint_weight, Hp),
            _padded(net.joint_bias, Jp),
            _padded(net.value_weight.t(), Hp) if value else None,
            _padded(net.value_bias, Hp) if value else None,
        )
    batch, pieces = path.coefficients.shape[0], path.coefficients.shape[1]
    if path.kind == "linear":
        pieces -= 1
    sizes = [_PATH_CODES[path.kind], batch, pieces, C, H, J, net.heads,
             _INPUT_CODES[net.feature_input],
             -1 if net.value_input is None else _INPUT_CODES[net.value_input], Hp, Jp]
    for placement in controls:
        sizes.extend(placement)
    return _FusedOperands(tensors, torch.tensor(sizes, dtype=torch.int64), Hp, Jp)


def _pointer_array(tensors) -> ctypes.Array:
    return (ctypes.c_void_p * len(tensors))(*(None if t is None else t.data_ptr()
                                              for t in tensors))


class FusedKernelRecurrence(torch.autograd.Function):
    """The slow net and the recurrence in one compiled kernel (:class:`KernelRecurrence`
    with the controls computed inside the time loop, one segment of steps at a time, and
    never stored).

    Inputs: ``M0 (N, d_out, d_in)``, ``steps``, ``spec``, ``activations`` as
    :class:`KernelRecurrence`; ``net`` (:class:`FusedSlowNet`), ``path``
    (:class:`PathPieces`, no gradient), ``oja`` (the loop runs on ``W^T``: the fixed
    factor is the value, the target the key), then ``*net.parameters()``. Returns ``M`` at
    the kept grid indices ``(len(keep), N, d_out, d_in)``; the gradients go to ``M0``
    and the slow net's parameters.
    """

    @staticmethod
    def forward(ctx, M0, steps, spec, activations, net, path, oja, *parameters):
        load()  # a failed build is the error to report first
        tensors = (M0, path.coefficients, path.offset, *parameters)
        if not all(supports(t.device, t.dtype) and t.dtype == M0.dtype for t in tensors):
            raise ValueError("the fused kernel takes CPU tensors of one dtype, float32 or "
                             f"float64; got {[(t.dtype, t.device.type) for t in tensors]}")
        if not fuses_heads(net.heads, M0.dtype):
            raise ValueError(f"heads: the fused kernel needs a number of heads dividing "
                             f"{lanes(M0.dtype)}, got {net.heads}")
        _check_stages(spec)
        controls = (net.value, net.key, net.rate) if oja else (net.key, net.value, net.rate)
        operands = _fused_operands(net, path, controls)
        flat, d_out, d_in = M0.shape
        M0 = M0.contiguous()
        kept, checkpoints = _states(M0, steps, spec)
        entry = _entry("fused_forward", M0.dtype)
        tables = _tables(spec, activations, steps)
        status = entry(_pointer_array(operands.tensors), _address(operands.sizes), net.eps,
                       _address(M0), *(_address(t) for t in tables),
                       *_sizes(spec, steps, flat, d_out, d_in), _address(kept),
                       _address(checkpoints), torch.get_num_threads())
        _check(status, "forward")
        ctx.save_for_backward(steps, checkpoints)
        ctx.spec, ctx.activations, ctx.net, ctx.operands = spec, activations, net, operands
        return kept

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_kept):
        steps, checkpoints = ctx.saved_tensors
        spec, net, operands = ctx.spec, ctx.net, ctx.operands
        grad_kept = grad_kept.contiguous()
        flat, d_out, d_in = checkpoints.shape[1:]
        threads = torch.get_num_threads()
        H, C = net.in_weight.shape
        J = net.joint_weight.shape[0]
        Hp, Jp = operands.hidden_pad, operands.joint_pad
        zeros = checkpoints.new_zeros
        value = net.value_input is not None
        slots = (zeros(threads, C, Hp), zeros(threads, Hp), zeros(threads, Hp),
                 zeros(threads, Hp), zeros(threads, H, Jp), zeros(threads, Jp),
                 zeros(threads, C, Hp) if value else None, zeros(threads, Hp) if value else None)
        grad_M0 = torch.empty_like(checkpoints[0])
        entry = _entry("fused_backward", checkpoints.dtype)
        tables = _tables(spec, ctx.activations, steps)
        status = entry(_pointer_array(operands.tensors), _address(operands.sizes), net.eps,
                       *(_address(t) for t in tables), *_sizes(spec, steps, flat, d_out, d_in),
                       _address(checkpoints), _address(grad_kept),
                       _pointer_array(slots), _address(grad_M0), threads)
        _check(status, "backward")
        summed = [None if slot is None else slot.sum(0) for slot in slots]
        grads = (summed[0][:, :H].t(), summed[1][:H], summed[2][:H], summed[3][:H],
                 summed[4][:, :J].t(), summed[5][:J])
        if value:
            grads = (*grads, summed[6][:, :H].t(), summed[7][:H])
        return (grad_M0, None, None, None, None, None, None, *grads)


def fused_recurrence(net: FusedSlowNet, path: PathPieces, M0: Tensor, steps: Tensor, spec,
                     activations: tuple[str, str, str], oja: bool) -> Tensor:
    """Run :class:`FusedKernelRecurrence`: the slow net at the stage points and the
    recurrence in one kernel call (forward) and one hand-written backward.

    Returns:
        ``(len(keep), N, d_out, d_in)`` with ``N = batch * heads``.
    """
    return FusedKernelRecurrence.apply(M0, steps, spec, activations, net, path, oja,
                                       *net.parameters())
