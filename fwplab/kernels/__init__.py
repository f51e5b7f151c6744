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
The build compiles this one file only (about 20 s on two cores).

The same kernel can also compute the controls itself (:class:`FusedKernelRecurrence`,
the models' solver ``"fused"``): given the path's pieces and the slow net's weights
(:class:`FusedSlowNet`: input projection, LayerNorm, joint and value projections), each
thread evaluates the path and the slow net at the stage points of one segment of ``K``
steps for its group's series, runs the segment, and moves on, so the controls never
leave the cache and are never stored; the backward recomputes a segment's controls,
walks it in reverse and backpropagates into the slow net's weights (per-thread sums,
added up at the end). Its row-major products keep a tile of up to 6 rows x 4 vectors in
registers.

It is built with ``torch.utils.cpp_extension`` on first use into
``$FWPLAB_KERNEL_CACHE`` (default ``~/.cache/fwplab/kernels/<torch>-<python>-<cpu>``,
one folder per CPU model since the code uses the host's instruction set)
and reused afterwards. Where no compiler or ``ninja`` is present, or the build
fails, :func:`available` warns once and returns ``False``, and the models fall
back to the pure-PyTorch fast path. ``FWPLAB_KERNEL=0`` keeps the ``"auto"``
solver off the kernel. The build is quiet: PyTorch's build messages (such as its
"No CUDA runtime is found" notice on machines without a GPU) are kept off stderr,
and only a failure reaches the user, as that one-line warning.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import io
import logging
import os
import platform
import sys
import time
import warnings
from itertools import pairwise
from pathlib import Path
from typing import Iterator, NamedTuple, Optional

import torch
from torch import Tensor

__all__ = [
    "SOURCE",
    "available",
    "build_seconds",
    "cache_directory",
    "enabled",
    "load",
    "quiet_build",
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
    """Whether the ``"auto"`` solver may use the kernel (``FWPLAB_KERNEL`` is not ``0``)."""
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


#: The logger PyTorch's extension builder writes its notices to.
BUILD_LOGGER = "torch.utils.cpp_extension"


@contextlib.contextmanager
def quiet_build() -> Iterator[list[str]]:
    """Keep the build's chatter off stderr; yields the list that collects it.

    PyTorch's extension builder logs notices (on a CUDA build of PyTorch without a
    GPU: "No CUDA runtime is found, using CUDA_HOME=...") and may print or warn; all
    of it goes into the yielded list instead of stderr.
    """
    collected: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            collected.append(record.getMessage())

    logger = logging.getLogger(BUILD_LOGGER)
    handler, propagate = _Collect(), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    printed = io.StringIO()
    try:
        with warnings.catch_warnings(record=True) as caught, \
                contextlib.redirect_stderr(printed), contextlib.redirect_stdout(printed):
            warnings.simplefilter("always")
            yield collected
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
        collected.extend(str(w.message) for w in caught)
        collected.extend(line for line in printed.getvalue().splitlines() if line.strip())


def cache_directory() -> Path:
    """Where the kernel is built: ``$FWPLAB_KERNEL_CACHE`` or a folder under ``~/.cache``.

    The default folder is specific to the torch and Python versions and the CPU, since
    the code is compiled for the host's instruction set.
    """
    root = os.environ.get("FWPLAB_KERNEL_CACHE")
    if root:
        return Path(root).expanduser()
    version = torch.__version__.replace("+", "_")
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    return (Path.home() / ".cache" / "fwplab" / "kernels"
            / f"torch{version}-{python}-{platform.machine() or 'cpu'}-{_cpu_tag()}")


def _cpu_tag() -> str:
    """A short hash of the CPU model and its instruction set extensions."""
    description = platform.processor()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        description += "".join(sorted({line for line in lines
                                       if line.startswith(("model name", "flags", "Features"))}))
    except OSError:
        pass
    return hashlib.sha1(description.encode()).hexdigest()[:8]


def _compiler_flags() -> list[list[str]]:
    """Flag sets to try in order: with OpenMP and the host's instruction set, without
    OpenMP (threads of its own), then without either."""
    if sys.platform == "win32":
        return [["/O2"]]
    # The flags PyTorch itself is built with, which let loops with comparisons vectorise.
    base = ["-O3", "-ffp-contract=fast", "-fno-trapping-math", "-fno-math-errno", "-pthread"]
    machine = platform.machine().lower()
    native = ["-mcpu=native"] if machine in ("arm64", "aarch64") else ["-march=native"]
    return [base + native + [OPENMP_FLAG], base + native, base]


#: Built with it, the kernel runs its groups on the OpenMP threads PyTorch already has
#: (the library asks for ``libgomp.so.1``, which PyTorch loaded): threads of its own had to
#: share the cores with PyTorch's, which spin after each parallel operation (at B=128,
#: 2 threads, the fused forward+backward took 92 ms with them, 82 ms with
#: ``OMP_WAIT_POLICY=PASSIVE``).
OPENMP_FLAG = "-fopenmp"


def load() -> ctypes.CDLL:
    """Build (first call only) and load the kernel library.

    Returns:
        The loaded library.

    Raises:
        RuntimeError: naming why the kernel could not be built or loaded.
    """
    if _Build.library is not None:
        return _Build.library
    if _Build.error is not None:
        raise RuntimeError(_Build.error)
    directory = cache_directory()
    failures = []
    started = time.perf_counter()
    for flags in _compiler_flags():
        try:
            with quiet_build():
                from torch.utils import cpp_extension  # its import logs the CUDA notice

                directory.mkdir(parents=True, exist_ok=True)
                path = cpp_extension.load(
                    name="fwplab_recurrence", sources=[str(SOURCE)], extra_cflags=flags,
                    extra_ldflags=[] if sys.platform == "win32" else
                    ["-pthread", *(f for f in flags if f == OPENMP_FLAG)],
                    build_directory=str(directory), is_python_module=False, verbose=False,
                )
            library = ctypes.CDLL(str(path) if isinstance(path, str) else
                                  str(directory / "fwplab_recurrence.so"))
            _declare(library)
        except Exception as error:  # no compiler, no ninja, failed build or load
            failures.append(" ".join(f"{type(error).__name__}: {error}".split())[:300])
            continue
        _Build.library = library
        _Build.seconds = time.perf_counter() - started
        return library
    _Build.error = "fwplab kernel build failed: " + " | ".join(failures)
    raise RuntimeError(_Build.error)


def available() -> bool:
    """Whether the kernel builds and loads; warns once (one line) when it does not."""
    try:
        load()
    except RuntimeError as error:
        if not _Build.warned:
            _Build.warned = True
            first_line = str(error).splitlines()[0][:200]
            warnings.warn(f"{first_line}; using the pure-PyTorch fast path instead",
                          RuntimeWarning, stacklevel=2)
        return False
    return True


def build_seconds() -> Optional[float]:
    """Seconds the first :func:`load` of this process took (build or cache hit), if any."""
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
