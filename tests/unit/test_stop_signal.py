"""Ctrl-C handling in-process: the first asks for a stop, the second aborts, never mid-write."""

from __future__ import annotations

import os
import signal

import pytest

from sdbatch.run.control import StopSignal


def ctrl_c() -> None:
    os.kill(os.getpid(), signal.SIGINT)  # the handler runs before os.kill returns to Python


def test_first_ctrl_c_asks_for_a_stop_and_second_aborts(capfd):
    stop = StopSignal().install()
    try:
        ctrl_c()
        assert stop.should_stop() and stop.reason == "Ctrl-C"
        assert "Ctrl-C again aborts" in capfd.readouterr().err
        with pytest.raises(KeyboardInterrupt):
            ctrl_c()
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_second_ctrl_c_during_a_write_waits_for_the_write_to_finish():
    stop = StopSignal().install()
    written = []
    try:
        ctrl_c()
        with pytest.raises(KeyboardInterrupt):
            with stop.deferred():
                written.append("image")
                ctrl_c()  # arrives between the image and its row
                written.append("row")
        assert written == ["image", "row"]
        with stop.deferred():  # the pending abort was spent: a clean block stays clean
            written.append("next")
    finally:
        stop.restore()


def test_an_error_inside_a_deferred_write_is_not_masked():
    stop = StopSignal().install()
    try:
        ctrl_c()
        with pytest.raises(OSError, match="disk full"):
            with stop.deferred():
                ctrl_c()
                raise OSError("disk full")
    finally:
        stop.restore()
