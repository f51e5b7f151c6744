"""Speech Commands v0.02 as in Kidger et al. (2020): wav folders to 20 MFCCs over 161 frames.

Ten words are kept (``yes no up down left right on off stop go``, class indices in
this order) and only clips of exactly one second (16000 samples at 16 kHz); each
becomes the MFCCs that ``torchaudio.transforms.MFCC(log_mels=True, n_mfcc=20,
melkwargs=dict(n_fft=200, n_mels=64))`` computes, here in plain torch::

    S[f, m]  = |STFT(w)[f, m]|^2       Hann window (periodic) of n_fft, hop n_fft // 2,
                                       centred frames with reflect padding
    M[j, m]  = sum_f H[f, j] S[f, m]   H: triangular filters, equally spaced on the
                                       HTK mel scale mel(f) = 2595 log10(1 + f / 700)
    C[k, m]  = sum_j D[k, j] log(M[j, m] + 1e-6)
    D[k, j]  = sqrt(2 / n_mels) cos(pi k (j + 1/2) / n_mels), row k = 0 times 1/sqrt(2)

16000 samples give ``1 + 16000 // 100 = 161`` frames. Audio is read with the standard
library ``wave`` module (16-bit PCM), so neither torchaudio nor an audio backend is needed.
"""

from __future__ import annotations

import math
import sys
import wave
from array import array
from pathlib import Path
from typing import Sequence, Union

import torch
from torch import Tensor

from .ts import DataFormatError

__all__ = [
    "SPEECH_COMMANDS_CLASSES",
    "read_wav",
    "mel_filterbank",
    "dct_matrix",
    "mfcc",
    "read_speech_commands",
]

SPEECH_COMMANDS_CLASSES = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
SAMPLE_RATE = 16000
LOG_OFFSET = 1e-6
PCM16_SCALE = 2.0**15


def read_wav(path: Union[str, Path]) -> tuple[Tensor, int]:
    """Read a mono 16-bit PCM wav file.

    Returns:
        (samples, sample_rate): ``(samples,)`` float32 in ``[-1, 1)`` and the rate in Hz.

    Raises:
        DataFormatError: unreadable file, more than one channel or not 16-bit samples.
    """
    try:
        with wave.open(str(path), "rb") as handle:
            channels, width = handle.getnchannels(), handle.getsampwidth()
            rate, frames = handle.getframerate(), handle.readframes(handle.getnframes())
    except (wave.Error, EOFError, OSError) as error:
        raise DataFormatError(f"{path}: not a readable wav file ({error})") from None
    if channels != 1 or width != 2:
        raise DataFormatError(f"{path}: expected mono 16-bit PCM, got {channels} channel(s) of "
                              f"{8 * width}-bit samples")
    samples = array("h")
    samples.frombytes(frames[: len(frames) // 2 * 2])
    if sys.byteorder == "big":
        samples.byteswap()  # wav stores little-endian samples
    return torch.frombuffer(samples, dtype=torch.int16).float() / PCM16_SCALE, rate


def _hz_to_mel(frequency: Tensor) -> Tensor:
    return 2595.0 * torch.log10(1.0 + frequency / 700.0)


def _mel_to_hz(mel: Tensor) -> Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(
    n_freqs: int, n_mels: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Triangular filters equally spaced on the HTK mel scale (no area normalisation).

    ```
    f_i   = linspace(0, sample_rate / 2, n_freqs)           frequency of STFT bin i
    p_j   = mel^-1(linspace(mel(f_min), mel(f_max), n_mels + 2))
    H[i, j] = max(0, min((f_i - p_j) / (p_{j+1} - p_j), (p_{j+2} - f_i) / (p_{j+2} - p_{j+1})))
    ```

    Returns:
        Tensor: ``(n_freqs, n_mels)`` filter weights.
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    bins = torch.linspace(0.0, sample_rate // 2, n_freqs, dtype=torch.float64)
    mels = torch.linspace(_hz_to_mel(torch.tensor(f_min, dtype=torch.float64)).item(),
                          _hz_to_mel(torch.tensor(f_max, dtype=torch.float64)).item(),
                          n_mels + 2, dtype=torch.float64)
    points = _mel_to_hz(mels)
    left, centre, right = points[:-2], points[1:-1], points[2:]
    rising = (bins.unsqueeze(1) - left) / (centre - left)
    falling = (right - bins.unsqueeze(1)) / (right - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).to(dtype)


def dct_matrix(n_out: int, n_in: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Orthonormal DCT-II matrix.

    ```
    D[k, j] = sqrt(2 / n_in) cos(pi k (j + 1/2) / n_in),   D[0, j] = sqrt(1 / n_in)
    ```

    Returns:
        Tensor: ``(n_out, n_in)``; its rows are orthonormal.
    """
    k = torch.arange(n_out, dtype=torch.float64).unsqueeze(1)
    j = torch.arange(n_in, dtype=torch.float64)
    matrix = torch.cos(math.pi / n_in * (j + 0.5) * k) * math.sqrt(2.0 / n_in)
    matrix[0] /= math.sqrt(2.0)
    return matrix.to(dtype)


def mfcc(
    waveforms: Tensor, sample_rate: int = SAMPLE_RATE, n_mfcc: int = 20, n_fft: int = 200,
    n_mels: int = 64,
) -> Tensor:
    """Mel-frequency cepstral coefficients from log mel power spectra (see the module docstring).

    Args:
        waveforms: ``(batch, samples)`` audio.
        sample_rate: sampling rate in Hz.
        n_mfcc: number of coefficients kept.
        n_fft: STFT size and window length; the hop is ``n_fft // 2``.
        n_mels: number of mel filters.

    Returns:
        Tensor: ``(batch, frames, n_mfcc)`` with ``frames = 1 + samples // (n_fft // 2)``.
    """
    if waveforms.dim() != 2:
        raise ValueError(f"waveforms: expected shape (batch, samples), got {tuple(waveforms.shape)}")
    if waveforms.shape[1] <= n_fft // 2:
        raise ValueError(f"waveforms: expected more than {n_fft // 2} samples (reflect padding), "
                         f"got {waveforms.shape[1]}")
    window = torch.hann_window(n_fft, periodic=True, dtype=waveforms.dtype, device=waveforms.device)
    spectrum = torch.stft(waveforms, n_fft, hop_length=n_fft // 2, win_length=n_fft,
                          window=window, center=True, pad_mode="reflect", normalized=False,
                          onesided=True, return_complex=True)
    power = spectrum.abs() ** 2  # (batch, n_fft // 2 + 1, frames)
    filters = mel_filterbank(n_fft // 2 + 1, n_mels, sample_rate, dtype=waveforms.dtype)
    mel_power = torch.einsum("bfm,fj->bmj", power, filters.to(waveforms.device))
    dct = dct_matrix(n_mfcc, n_mels, dtype=waveforms.dtype).to(waveforms.device)
    return torch.log(mel_power + LOG_OFFSET) @ dct.T


def read_speech_commands(
    root: Union[str, Path],
    classes: Sequence[str] = SPEECH_COMMANDS_CLASSES,
    clip_samples: int = SAMPLE_RATE,
    chunk_size: int = 1024,
) -> tuple[Tensor, Tensor]:
    """Read Speech Commands wav folders and compute their MFCCs.

    Args:
        root: folder holding one sub-folder of ``.wav`` clips per class.
        classes: the sub-folders to read, in class-index order.
        clip_samples: only clips of exactly this many samples are kept (as Kidger et al.).
        chunk_size: clips per MFCC batch (bounds memory).

    Returns:
        (x, y): ``x`` of shape ``(clips, 161, 20)`` float32 MFCCs, ``y`` of shape
        ``(clips,)`` int64 class indices. Files are read in sorted order.

    Raises:
        DataFormatError: missing folder, a clip at another sampling rate, or no clip kept.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataFormatError(f"{root}: Speech Commands folder not found")
    features: list[Tensor] = []
    labels: list[int] = []
    pending: list[Tensor] = []
    for index, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            raise DataFormatError(f"{folder}: class folder {name!r} not found")
        for path in sorted(folder.glob("*.wav")):
            samples, rate = read_wav(path)
            if rate != SAMPLE_RATE:
                raise DataFormatError(f"{path}: expected {SAMPLE_RATE} Hz, got {rate} Hz")
            if len(samples) != clip_samples:
                continue
            pending.append(samples)
            labels.append(index)
            if len(pending) == chunk_size:
                features.append(mfcc(torch.stack(pending)))
                pending.clear()
    if pending:
        features.append(mfcc(torch.stack(pending)))
    if not features:
        raise DataFormatError(f"{root}: no clip of exactly {clip_samples} samples in the class "
                              f"folders {', '.join(classes)}")
    return torch.cat(features), torch.tensor(labels, dtype=torch.int64)
