"""Tests for stream_server.training.evaluate: figures from a confusion matrix, a whole run, its
reports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from stream_server.errors import DatasetError
from stream_server.inference.model import LoadedModel
from stream_server.training.dataset import Clip, load_audio, scan, window_starts, windows_of
from stream_server.training.evaluate import (
    EvalReport,
    GenreFigures,
    confusion_matrix,
    evaluate,
    format_report,
    per_genre_figures,
    save_report,
)
from tests.helpers.audio import encode_audio, music
from tests.helpers.constants import LABELS

RATE = 22050  # the tiny model's rate; its windows are 2 s long
HOP_S = 1.0


# -- confusion_matrix / per_genre_figures --------------------------------------------------------

# rows: true, columns: predicted, over the labels a, b, c, d
HAND_TRUE = [0, 0, 0, 1, 1, 3, 3, 3]
HAND_PRED = [0, 0, 1, 1, 2, 0, 1, 1]
HAND_CONFUSION = [
    [2, 1, 0, 0],
    [0, 1, 1, 0],
    [0, 0, 0, 0],  # c: no true clips (predicted once)
    [1, 2, 0, 0],  # d: never predicted
]


def test_confusion_matrix_by_hand() -> None:
    m = confusion_matrix(HAND_TRUE, HAND_PRED, 4)
    assert m.dtype == np.int64
    np.testing.assert_array_equal(m, HAND_CONFUSION)
    np.testing.assert_array_equal(confusion_matrix([], [], 3), np.zeros((3, 3)))
    np.testing.assert_array_equal(confusion_matrix([1, 1], [1, 1], 2), [[0, 0], [0, 2]])


def test_per_genre_figures_by_hand() -> None:
    with np.errstate(all="raise"):
        figures = per_genre_figures(np.array(HAND_CONFUSION, dtype=np.int64), "abcd")
    assert list(figures) == ["a", "b", "c", "d"]
    a, b, c, d = (figures[k] for k in "abcd")
    assert a.precision == pytest.approx(2 / 3)
    assert a.recall == pytest.approx(2 / 3)
    assert a.f1 == pytest.approx(2 / 3)
    assert a.clips == 3
    assert b.precision == pytest.approx(1 / 4)
    assert b.recall == pytest.approx(1 / 2)
    assert b.f1 == pytest.approx(1 / 3)
    assert b.clips == 2
    assert c == GenreFigures(0.0, 0.0, 0.0, 0)  # predicted once, never true
    assert d == GenreFigures(0.0, 0.0, 0.0, 3)  # never predicted
    for f in figures.values():
        assert isinstance(f.precision, float) and isinstance(f.clips, int)


def test_per_genre_figures_all_zero() -> None:
    with np.errstate(all="raise"):
        figures = per_genre_figures(np.zeros((2, 2), dtype=np.int64), ["x", "y"])
    assert figures == {"x": GenreFigures(0, 0, 0, 0), "y": GenreFigures(0, 0, 0, 0)}
    perfect = per_genre_figures(np.diag([3, 1]).astype(np.int64), ["x", "y"])
    assert perfect == {"x": GenreFigures(1, 1, 1, 3), "y": GenreFigures(1, 1, 1, 1)}


# -- evaluate ------------------------------------------------------------------------------------


def write(path: Path, audio: np.ndarray, rate: int = RATE, codec: str = "pcm_s16le") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    encode_audio(path, audio, rate, codec=codec)


def noise(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.3 * rng.standard_normal((round(seconds * RATE), 1))).astype(np.float32)


def tone(seconds: float, freq: float) -> np.ndarray:
    t = np.arange(round(seconds * RATE)) / RATE
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)[:, None]


#: (path, seconds, windows at a 1 s hop)
CLIPS = [
    ("blues/b1.wav", 3.0, 2),
    ("blues/b2.flac", 4.3, 4),  # remainder: the last window is flush with the end
    ("jazz/j1.wav", 5.0, 4),
    ("rock/r1.wav", 3.2, 3),
    ("rock/r2.wav", 2.0, 1),  # exactly one window
]


@pytest.fixture(scope="module")
def eval_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """blues, jazz and rock clips (no classical), and a "polka" folder the model does not know."""
    root = tmp_path_factory.mktemp("eval-data")
    write(root / "blues" / "b1.wav", music(3.0, rate=RATE, channels=1, seed=1))
    write(root / "blues" / "b2.flac", music(4.3, rate=48000, channels=1, seed=2), 48000, "flac")
    write(root / "jazz" / "j1.wav", noise(5.0, seed=3))
    write(root / "rock" / "r1.wav", tone(3.2, 2500.0))
    write(root / "rock" / "r2.wav", music(2.0, rate=RATE, channels=1, seed=4) * 0.1)
    write(root / "polka" / "p1.wav", music(0.5, rate=RATE, channels=1, seed=5))
    write(root / "polka" / "p2.wav", music(0.5, rate=RATE, channels=1, seed=6))
    return root


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("eval-cache"))


@pytest.fixture(scope="module")
def report(tiny_model: LoadedModel, eval_root: Path, cache_dir: str) -> EvalReport:
    return evaluate(tiny_model, eval_root, scan(eval_root), hop_seconds=HOP_S, cache_dir=cache_dir)


@pytest.fixture(scope="module")
def direct(tiny_model: LoadedModel, eval_root: Path) -> dict[str, np.ndarray]:
    """Each scored clip's window probabilities, computed here with the model's classifier."""
    pre = tiny_model.preprocessing
    hop = round(HOP_S * pre.sample_rate)
    out = {}
    for path, _, _ in CLIPS:
        _, audio = load_audio(eval_root, [Clip(path, path.split("/")[0])], pre.sample_rate)
        wins = torch.from_numpy(windows_of(audio[0], pre.window_samples, hop))
        with torch.inference_mode():
            out[path] = tiny_model.classifier.cpu().eval()(wins).numpy()
    return out


def test_tiny_model_is_as_expected(tiny_model: LoadedModel) -> None:
    assert tiny_model.labels == LABELS
    assert tiny_model.preprocessing.sample_rate == RATE
    assert tiny_model.preprocessing.window_samples == 2 * RATE


def test_evaluate_counts(report: EvalReport, eval_root: Path, tiny_model: LoadedModel) -> None:
    assert report.model == tiny_model.source
    assert report.labels == LABELS
    assert report.clips == len(CLIPS)
    assert report.skipped == {"polka": 2}
    assert report.seconds > 0
    _, audio = load_audio(eval_root, [Clip(p, p.split("/")[0]) for p, _, _ in CLIPS], RATE)
    starts = [window_starts(a.size, 2 * RATE, round(HOP_S * RATE)) for a in audio]
    assert [len(s) for s in starts] == [n for _, _, n in CLIPS]
    assert report.windows == sum(len(s) for s in starts) == 14


def test_evaluate_clip_is_the_mean_of_its_windows(
    report: EvalReport, direct: dict[str, np.ndarray]
) -> None:
    expected = []
    hits = 0
    for path, _, n_windows in CLIPS:
        probs = direct[path]
        assert probs.shape == (n_windows, len(LABELS))
        truth = LABELS.index(path.split("/")[0])
        hits += int((probs.argmax(1) == truth).sum())
        expected.append((path, path.split("/")[0], LABELS[int(probs.mean(0).argmax())]))
    assert report.clip_predictions == expected
    assert report.window_accuracy == pytest.approx(hits / report.windows)
    true = [LABELS.index(t) for _, t, _ in expected]
    pred = [LABELS.index(p) for _, _, p in expected]
    np.testing.assert_array_equal(report.confusion, confusion_matrix(true, pred, len(LABELS)))


class LevelClassifier(torch.nn.Module):
    """Probabilities looked up from each window's mean level: below 0.05, up to 0.3, above."""

    TABLE = torch.tensor(
        [
            [0.3, 0.7 / 3, 0.7 / 3, 0.7 / 3],  # a slight lean to blues
            [0.4 / 3, 0.6, 0.4 / 3, 0.4 / 3],  # classical
            [0.05, 0.05, 0.85, 0.05],  # a strong jazz
        ]
    )

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        bucket = torch.bucketize(wave.mean(dim=1), torch.tensor([0.05, 0.3]))
        return self.TABLE[bucket]


def test_evaluate_clip_is_not_a_vote_or_a_max(tiny_model: LoadedModel, tmp_path: Path) -> None:
    # 1 s levels; the six 2 s windows (1 s hop) have the means 0, 0, 0, 0.1, 0.2, 0.4: three
    # lean to blues, two are classical, one is surely jazz. A majority vote says blues, the
    # highest window probability says jazz, the mean of the probabilities says classical.
    levels = [0.0, 0.0, 0.0, 0.0, 0.2, 0.2, 0.6]
    audio = np.repeat(np.array(levels, np.float32), RATE)[:, None]
    write(tmp_path / "jazz" / "steps.wav", audio)
    model = LoadedModel(LevelClassifier(), LABELS, tiny_model.preprocessing, "levels")
    result = evaluate(model, tmp_path, scan(tmp_path), hop_seconds=HOP_S)
    assert result.windows == 6
    assert result.window_accuracy == pytest.approx(1 / 6)
    assert result.clip_predictions == [("jazz/steps.wav", "jazz", "classical")]
    assert result.clip_accuracy == 0.0
    assert result.confusion[LABELS.index("jazz")].tolist() == [0, 1, 0, 0]
    assert result.macro_f1 == 0.0


def test_evaluate_figures_are_consistent(report: EvalReport) -> None:
    m = report.confusion
    assert m.shape == (len(LABELS), len(LABELS))
    assert int(m.sum()) == report.clips
    assert report.clip_accuracy == pytest.approx(np.trace(m) / m.sum())
    assert m.sum(axis=1).tolist() == [2, 0, 1, 2]  # blues, classical, jazz, rock
    assert list(report.per_genre) == list(LABELS)
    for i, label in enumerate(LABELS):
        f = report.per_genre[label]
        assert f.clips == int(m[i].sum())
        recall = m[i, i] / m[i].sum() if m[i].sum() else 0.0
        precision = m[i, i] / m[:, i].sum() if m[:, i].sum() else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        assert f.recall == pytest.approx(recall)
        assert f.precision == pytest.approx(precision)
        assert f.f1 == pytest.approx(f1)
    assert report.per_genre["classical"].recall == 0.0
    present = [report.per_genre[g].f1 for g in ("blues", "jazz", "rock")]
    assert report.macro_f1 == pytest.approx(float(np.mean(present)))


def test_evaluate_batch_size_does_not_matter(
    report: EvalReport, tiny_model: LoadedModel, eval_root: Path, cache_dir: str
) -> None:
    # 4 windows per clip in batches of 3: each clip's windows span two batches
    clips = [Clip("blues/b2.flac", "blues"), Clip("jazz/j1.wav", "jazz")]
    again = evaluate(
        tiny_model, eval_root, clips, hop_seconds=HOP_S, batch_size=3, cache_dir=cache_dir
    )
    assert again.skipped == {}
    assert again.windows == 8
    assert again.clip_predictions == report.clip_predictions[1:3]
    b2, j1 = report.clip_predictions[1:3]
    assert again.clip_accuracy == ((b2[1] == b2[2]) + (j1[1] == j1[2])) / 2


def test_evaluate_hop_changes_the_windows(tiny_model: LoadedModel, eval_root: Path) -> None:
    clip = Clip("jazz/j1.wav", "jazz")
    assert evaluate(tiny_model, eval_root, [clip], hop_seconds=2.5).windows == 3  # 0, 2.5, 3 s
    assert evaluate(tiny_model, eval_root, [clip], hop_seconds=3.0).windows == 2  # 0, 3 s


def test_evaluate_progress(
    tiny_model: LoadedModel,
    eval_root: Path,
    cache_dir: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    clips = [Clip("rock/r2.wav", "rock"), Clip("blues/b1.wav", "blues")]
    evaluate(tiny_model, eval_root, clips, hop_seconds=HOP_S, cache_dir=cache_dir, progress=True)
    err = capsys.readouterr().err
    assert "evaluating: 1/2 clips" in err
    assert err.endswith("evaluating: 2/2 clips\n")


def test_evaluate_without_matching_folders(tiny_model: LoadedModel, eval_root: Path) -> None:
    with pytest.raises(DatasetError, match="none of the genre folders match"):
        evaluate(tiny_model, eval_root, scan(eval_root, genres=["polka"]))
    with pytest.raises(DatasetError):
        evaluate(tiny_model, eval_root, [])


def test_to_json(report: EvalReport) -> None:
    data = report.to_json()
    assert {"clip_accuracy", "window_accuracy", "macro_f1", "per_genre", "confusion"} <= set(data)
    back = json.loads(json.dumps(data))
    assert back == data
    assert back["clip_accuracy"] == round(report.clip_accuracy, 4)
    assert back["window_accuracy"] == round(report.window_accuracy, 4)
    assert back["macro_f1"] == round(report.macro_f1, 4)
    assert back["clips"] == 5 and back["windows"] == 14
    assert back["confusion"] == {"labels": list(LABELS), "matrix": report.confusion.tolist()}
    assert list(back["per_genre"]) == list(LABELS)
    assert back["per_genre"]["classical"] == {"precision": 0, "recall": 0, "f1": 0, "clips": 0}
    assert back["per_genre"]["blues"]["clips"] == 2
    assert back["skipped_genres"] == {"polka": 2}
    assert back["clip_predictions"] == [
        {"clip": c, "true": t, "predicted": p} for c, t, p in report.clip_predictions
    ]


def test_save_report(report: EvalReport, tmp_path: Path) -> None:
    js, png = save_report(report, tmp_path / "out" / "eval")
    assert js == tmp_path / "out" / "eval" / "evaluation.json"
    assert json.loads(js.read_text(encoding="utf-8")) == report.to_json()
    assert png.parent == js.parent and png.suffix == ".png"
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 5000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 200 and height > 200


def test_format_report(report: EvalReport) -> None:
    text = format_report(report)
    for label in LABELS:
        assert label in text
    assert f"clip accuracy:   {report.clip_accuracy:.3f}" in text
    assert f"window accuracy: {report.window_accuracy:.3f}" in text
    assert f"macro F1:        {report.macro_f1:.3f}" in text
    assert "clips: 5, windows: 14" in text
    assert "skipped genres the model does not know: polka (2)" in text
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines()[-6:-2]}
    for label, counts in zip(LABELS, report.confusion.tolist(), strict=True):
        assert rows[label] == [str(c) for c in counts]


def test_format_report_without_skips() -> None:
    m = np.array(HAND_CONFUSION, dtype=np.int64)
    labels = ("a", "bb", "ccc", "a-rather-long-genre")
    hand = EvalReport(
        model="hand",
        labels=labels,
        clip_accuracy=0.375,
        window_accuracy=0.5,
        macro_f1=0.25,
        per_genre=per_genre_figures(m, labels),
        confusion=m,
        clips=8,
        windows=20,
        seconds=0.1,
    )
    text = format_report(hand)
    assert "skipped" not in text
    assert "clip accuracy:   0.375" in text
    assert "a-rather-long-genre" in text
    last = text.splitlines()[-1]
    assert last.split() == ["a-rather-long-genre", "1", "2", "0", "0"]


def test_undecodable_clip_is_reported_not_fatal(tmp_path: Path, tiny_model: LoadedModel) -> None:
    root = tmp_path / "data"
    (root / "jazz").mkdir(parents=True)
    encode_audio(root / "jazz" / "good.wav", music(3.0, rate=22050, channels=1), 22050)
    (root / "jazz" / "broken.wav").write_bytes(b"RIFF not really a wave file")
    report = evaluate(tiny_model, root, scan(root), hop_seconds=1.0)
    assert report.clips == 1
    assert report.unreadable == ["jazz/broken.wav"]
    assert report.to_json()["unreadable_clips"] == ["jazz/broken.wav"]
    assert "could not be decoded" in format_report(report)


def test_accuracy_per_source_follows_the_manifest(tiny_model: LoadedModel, tmp_path: Path) -> None:
    root = tmp_path / "data"
    write(root / "blues" / "a.wav", music(2.0, rate=RATE, channels=1, seed=1))
    write(root / "blues" / "b.wav", music(2.0, rate=RATE, channels=1, seed=2))
    write(root / "jazz" / "c.wav", noise(2.0, seed=3))
    (root / "MANIFEST.tsv").write_text(
        "file\tgenre\tsource_repo\tsource_path\n"
        "blues/a.wav\tblues\tx\tgenres/blues/blues.00001.au\n"
        "jazz/c.wav\tjazz\ty\tdata/emotifymusic/jazz/3.mp3\n",
        encoding="utf-8",
    )
    report = evaluate(tiny_model, root, scan(root), hop_seconds=1.0)
    right = {path: true == guess for path, true, guess in report.clip_predictions}
    assert report.per_source == {
        "emotify": (int(right["jazz/c.wav"]), 1),
        "gtzan": (int(right["blues/a.wav"]), 1),
        "unknown": (int(right["blues/b.wav"]), 1),  # not in the manifest
    }
    assert report.to_json()["per_source"]["gtzan"]["clips"] == 1
    assert "source" in format_report(report)
