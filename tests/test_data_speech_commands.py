"""Speech Commands: wav reading, MFCCs (checked against torchaudio's numbers), the loader."""

import math
import sys
import wave
from array import array

import pytest
import torch

from fwplab.data import DataFormatError, load_dataset, mfcc, read_speech_commands, read_wav
from fwplab.data.speech_commands import SPEECH_COMMANDS_CLASSES, dct_matrix, mel_filterbank

ATOL_PCM = 0.0
ATOL_ORTHONORMAL = 1e-12
# torchaudio builds its filterbank in float32, so the two agree to ~1e-6 relative.
ATOL_TORCHAUDIO = 2e-3
# torchaudio 2.11 MFCC(log_mels=True, n_mfcc=20, melkwargs=dict(n_fft=200, n_mels=64)) of the
# float64 signal in _reference_signal(), frames 0, 80 and 160 (rounded to 4 decimals).
TORCHAUDIO_MFCC = {
    0: [0.343, 4.8324, 1.8476, 3.1286, -15.4285, -12.4083, -0.3109, -3.9211, -6.2362, -2.2449,
        -2.1033, -1.1861, -0.2414, -2.9617, -1.3879, 2.1633, 0.3917, -0.9934, 0.5639, 0.4344],
    80: [-62.311, 30.3406, 1.8615, 4.0598, -23.1232, -21.16, 1.2309, -12.0212, -7.8109, 10.6879,
         -0.7958, -2.718, 7.3173, -1.9017, -4.3218, 3.0099, -1.8907, -2.496, 3.0237, -0.5588],
    160: [-9.9857, 17.5971, -1.9298, -5.3137, -9.8364, -7.0108, -4.8733, -6.5935, -3.3581,
          -1.3553, -3.8393, -1.8647, 0.2072, -2.1317, -0.3854, 1.8509, -0.6823, -0.1904, 1.5054,
          -1.2738],
}


def _reference_signal():
    n = torch.arange(16000, dtype=torch.float64)
    return (0.5 * torch.sin(2 * math.pi * 440 * n / 16000)
            + 0.25 * torch.sin(2 * math.pi * 3000 * n / 16000) * torch.exp(-n / 8000))


def _write_wav(path, samples, rate=16000, channels=1, width=2):
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(channels)
        handle.setsampwidth(width)
        handle.setframerate(rate)
        handle.writeframes(bytes(samples))


def _pcm(values):
    samples = array("h", values)
    if sys.byteorder == "big":
        samples.byteswap()
    return samples.tobytes()


def test_read_wav_scales_16_bit_pcm(tmp_path):
    values = [0, 1, -1, 32767, -32768, 1234]
    _write_wav(tmp_path / "a.wav", _pcm(values))
    samples, rate = read_wav(tmp_path / "a.wav")
    assert rate == 16000 and samples.dtype == torch.float32
    torch.testing.assert_close(samples, torch.tensor(values, dtype=torch.float32) / 32768,
                               atol=ATOL_PCM, rtol=0)


def test_read_wav_refuses_stereo_8_bit_and_garbage(tmp_path):
    _write_wav(tmp_path / "stereo.wav", _pcm([0, 0, 1, 1]), channels=2)
    with pytest.raises(DataFormatError, match="expected mono 16-bit PCM, got 2 channel"):
        read_wav(tmp_path / "stereo.wav")
    _write_wav(tmp_path / "byte.wav", bytes([1, 2, 3]), width=1)
    with pytest.raises(DataFormatError, match="got 1 channel\\(s\\) of 8-bit samples"):
        read_wav(tmp_path / "byte.wav")
    (tmp_path / "text.wav").write_text("not audio")
    with pytest.raises(DataFormatError, match="not a readable wav file"):
        read_wav(tmp_path / "text.wav")


def test_mfcc_matches_torchaudio_reference_values():
    features = mfcc(_reference_signal().unsqueeze(0))
    assert features.shape == (1, 161, 20) and features.dtype == torch.float64
    for frame, expected in TORCHAUDIO_MFCC.items():
        torch.testing.assert_close(features[0, frame], torch.tensor(expected, dtype=torch.float64),
                                   atol=ATOL_TORCHAUDIO, rtol=0)


def test_mfcc_frame_count_batch_and_errors():
    waves = torch.randn(3, 16000, generator=torch.Generator().manual_seed(0)) * 0.1
    batch = mfcc(waves)
    assert batch.shape == (3, 161, 20) and batch.dtype == torch.float32
    torch.testing.assert_close(mfcc(waves[1:2]), batch[1:2])
    assert mfcc(waves[:, :1000]).shape == (3, 1 + 1000 // 100, 20)
    with pytest.raises(ValueError, match=r"waveforms: expected shape \(batch, samples\)"):
        mfcc(waves[0])


def test_filterbank_and_dct_building_blocks():
    dct = dct_matrix(64, 64, dtype=torch.float64)
    torch.testing.assert_close(dct @ dct.T, torch.eye(64, dtype=torch.float64),
                               atol=ATOL_ORTHONORMAL, rtol=0)
    filters = mel_filterbank(101, 64, 16000, dtype=torch.float64)
    assert filters.shape == (101, 64) and (filters >= 0).all() and filters.max() <= 1
    # With only 101 bins the narrow low mel filters fall between bins (as in torchaudio).
    assert (filters.sum(0) > 0).sum() < 64 and filters[:, -1].sum() > 0


def _speech_folder(root, clips_per_class=2):
    generator = torch.Generator().manual_seed(0)
    for index, name in enumerate(SPEECH_COMMANDS_CLASSES):
        (root / name).mkdir(parents=True)
        for clip in range(clips_per_class):
            tone = torch.sin(torch.arange(16000) * 2 * math.pi * (200 + 100 * index) / 16000)
            noise = 0.01 * torch.randn(16000, generator=generator)
            pcm = ((0.3 * tone + noise) * 32767).round().to(torch.int16)
            _write_wav(root / name / f"clip{clip}.wav", _pcm(pcm.tolist()))
        _write_wav(root / name / "short.wav", _pcm([1] * 8000))  # skipped: not 16000 samples


def test_read_speech_commands_keeps_full_clips_in_class_order(tmp_path):
    _speech_folder(tmp_path)
    x, y = read_speech_commands(tmp_path, chunk_size=7)
    assert x.shape == (20, 161, 20)
    assert y.tolist() == [k for k in range(10) for _ in range(2)]
    one = mfcc(read_wav(tmp_path / "up" / "clip1.wav")[0].unsqueeze(0))
    torch.testing.assert_close(x[5], one[0])


def test_read_speech_commands_errors(tmp_path):
    with pytest.raises(DataFormatError, match="Speech Commands folder not found"):
        read_speech_commands(tmp_path / "absent")
    (tmp_path / "yes").mkdir()
    with pytest.raises(DataFormatError, match="class folder 'no' not found"):
        read_speech_commands(tmp_path)
    with pytest.raises(DataFormatError, match="no clip of exactly 16000 samples"):
        read_speech_commands(tmp_path, classes=("yes",))
    _write_wav(tmp_path / "yes" / "fast.wav", _pcm([0] * 16000), rate=8000)
    with pytest.raises(DataFormatError, match="expected 16000 Hz, got 8000 Hz"):
        read_speech_commands(tmp_path, classes=("yes",))


def test_load_dataset_speech_commands_from_folder(tmp_path):
    _speech_folder(tmp_path, clips_per_class=4)
    dataset = load_dataset("speech-commands", root=tmp_path)
    assert dataset.input_channels == 21 and dataset.channel_names[:2] == ("time", "mfcc0")
    assert dataset.train.x.shape[1:] == (161, 21)
    assert (len(dataset.train), len(dataset.val), len(dataset.test)) == (20, 10, 10)
    assert dataset.class_names == SPEECH_COMMANDS_CLASSES
    assert torch.bincount(dataset.test.y, minlength=10).tolist() == [1] * 10
    torch.testing.assert_close(dataset.train.x[0, :, 0], torch.arange(161.0))
