"""The client's optional extras, absent: without graphviz (`[draw]`) or tqdm (`[progress]`)
the SDK imports and works, says which extra a drawing needs, and shows no bar.
tests/test_install.py runs the SDK in an environment truly without them."""

import importlib
import io
import sys
import warnings

import pytest

import gradserve.client
from gradserve.client import Value, progress


def test_without_graphviz_drawing_names_its_extra_and_a_value_shows_its_repr(monkeypatch):
    monkeypatch.setitem(sys.modules, "graphviz", None)  # import graphviz raises ImportError
    monkeypatch.delitem(sys.modules, "gradserve.client.draw", raising=False)
    monkeypatch.delattr(gradserve.client, "draw", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'gradserve-client\[draw\]'"):
        importlib.import_module("gradserve.client.draw")
    with pytest.raises(ImportError, match="gradserve-client"):
        gradserve.client.draw_dot  # noqa: B018
    leaf = Value(2.5, label="x")
    assert leaf._repr_mimebundle_() == {"text/plain": "Value(data=2.5, grad=0.0, label='x')"}


def test_without_tqdm_a_stream_has_no_bar_and_asking_for_one_warns(monkeypatch):
    monkeypatch.setattr(progress, "tqdm", None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet = progress.progress_bar(10**6, None)
    quiet.update(5)
    quiet.close()
    with pytest.warns(UserWarning, match=r"gradserve-client\[progress\]"):
        asked = progress.progress_bar(10, True)
    assert isinstance(asked, progress.NoBar) and isinstance(quiet, progress.NoBar)


def test_with_tqdm_the_bar_is_tqdms():
    from tqdm import tqdm

    bar = progress.progress_bar(10, False)
    assert isinstance(bar, tqdm)
    bar.close()


class _Terminal(io.StringIO):
    """A stderr that says whether it is a terminal."""

    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize(
    ("total", "tty", "show", "shown"),
    [
        # docs/sdk.md: a bar "over 100,000 nodes" on a terminal
        (100_000, True, None, True),
        (99_999, True, None, False),  # one node short
        (10**6, True, None, True),  # well over
        (10**6, False, None, False),  # not a terminal
        (10, False, True, True),  # asked for: shown anyway
        (10**6, True, False, False),  # refused: never shown
    ],
)
def test_a_bar_shows_for_a_large_result_on_a_terminal_unless_told(
    monkeypatch, total, tty, show, shown
):
    monkeypatch.setattr(sys, "stderr", _Terminal(tty))
    bar = progress.progress_bar(total, show)
    try:
        assert bar.disable is not shown
        if shown:  # a disabled tqdm keeps none of its settings
            assert (bar.total, bar.unit, bar.leave) == (total, "node", False)
            bar.update(total)
            bar.refresh()
            if total == 100_000:  # counts scaled: "100k/100k", not "100000/100000"
                assert "100k/100k" in sys.stderr.getvalue()
    finally:
        bar.close()
