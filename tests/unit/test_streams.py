"""The attach framing and the CRI log format: pure byte logic."""

from __future__ import annotations

import pytest

from isobox import attach, logs
from isobox.attach import Frame


def test_frames_round_trip_across_arbitrary_chunking() -> None:
    stream = (attach.encode(Frame.STDOUT, b"hello") + attach.encode(Frame.STDERR, b"")
              + attach.encode_json(Frame.EXIT, {"exit_code": 3}))
    decoder = attach.Decoder()
    frames = []
    for i in range(len(stream)):  # one byte at a time: the worst case for a stream decoder
        frames.extend(decoder.feed(stream[i : i + 1]))
    assert frames == [(Frame.STDOUT, b"hello"), (Frame.STDERR, b""), (Frame.EXIT, b'{"exit_code": 3}')]
    assert decoder.pending == 0


def test_decoder_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="unknown frame"):
        list(attach.Decoder().feed(b"\x63\x00\x00\x00\x00\x00\x00\x00"))
    with pytest.raises(ValueError, match="too large"):
        list(attach.Decoder().feed(b"\x01\x00\x00\x00\xff\xff\xff\xff"))


def test_log_lines_keep_partial_lines_and_streams() -> None:
    data = logs.encode(1, b"one\ntwo", now=0) + logs.encode(2, b"err\n", now=0) + logs.encode(1, b" more\n", now=0)
    assert data.startswith(b"1970-01-01T00:00:00.000000000Z stdout F one\n")
    entries = list(logs.read_entries(data))
    assert [(e.stream, e.data) for e in entries] == [(1, b"one\n"), (1, b"two"), (2, b"err\n"), (1, b" more\n")]
    assert b"".join(e.data for e in entries if e.stream == 1) == b"one\ntwo more\n"


def test_log_reader_skips_damaged_lines_and_waits_for_unterminated() -> None:
    data = b"garbage\n" + logs.encode(1, b"ok\n", now=0) + b"2026-01-01T00:00:00Z stdout F half"
    assert [e.data for e in logs.read_entries(data)] == [b"ok\n"]


def test_output_stops_writing_to_a_hung_up_terminal_or_closed_pipe() -> None:
    import errno
    import io

    from isobox.cli.session import Output

    class Gone(io.RawIOBase):
        def __init__(self, err: int) -> None:
            self.err, self.calls = err, 0

        def write(self, data: object) -> int:
            self.calls += 1
            raise OSError(self.err, "gone")

    for err in (errno.EIO, errno.EPIPE):  # a terminal that hung up, a reader that left
        stream = Gone(err)
        out = Output(stream)  # type: ignore[arg-type]
        out.write(b"a")
        out.write(b"b")  # dropped: nobody reads any more
        assert stream.calls == 1
    with pytest.raises(OSError):  # anything else is a real error
        Output(Gone(errno.ENOSPC)).write(b"a")  # type: ignore[arg-type]
