"""One colour per label: model order, neutral speech and silence, stable extras."""

from __future__ import annotations

from stream_server.core.palette import GENRE_COLOURS, NEUTRAL, label_colours


def test_genres_take_colours_in_the_models_label_order() -> None:
    colours = label_colours(["blues", "classical", "jazz"])
    assert colours["blues"] == GENRE_COLOURS[0]
    assert colours["classical"] == GENRE_COLOURS[1]
    assert colours["jazz"] == GENRE_COLOURS[2]


def test_a_genres_colour_does_not_depend_on_what_else_is_shown() -> None:
    model = ["blues", "classical", "country", "jazz", "rock"]
    assert label_colours(model)["jazz"] == label_colours(model, extra=["rock", "jazz"])["jazz"]
    assert label_colours(model)["jazz"] != label_colours(["jazz"])["jazz"]  # order is the model's


def test_speech_and_silence_are_neutral_and_no_genre_is() -> None:
    colours = label_colours([f"g{i}" for i in range(20)] + ["speech"])
    assert colours["speech"] == colours["silence"] == NEUTRAL
    genres = [colours[f"g{i}"] for i in range(20)]
    assert NEUTRAL not in genres
    assert len(set(genres)) == 20


def test_a_label_the_model_lacks_gets_a_stable_colour_from_its_name() -> None:
    first = label_colours(["blues"], extra=["polka"])["polka"]
    assert first == label_colours(["rock", "jazz"], extra=["polka"])["polka"]
    assert first in GENRE_COLOURS
    assert label_colours(["blues"], extra=["blues"])["blues"] == GENRE_COLOURS[0]
