"""Wire messages: decoding what tabs send and encoding what the hub sends."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from platform_hub_client.bodies import EXTERNAL_ID, LINE, USER_NAME
from server.api import LoginRequest, decode_body
from server.errors import BadMessage
from server.protocol import (
    ENDED_WORDS,
    Attach,
    Cause,
    CloseCode,
    Ping,
    Rejected,
    RejectReason,
    SessionEnded,
    SessionEndReason,
    StateMessage,
    StateView,
    Switch,
    decode,
    decode_server,
    encode,
    restart_reason,
    restart_window_ms,
)
from tests.conftest import ENDED_WORDS as ENDED_WORDS_PROMISED


def test_decode_client_messages() -> None:
    """Valid switch and ping frames decode to their structs."""
    assert decode('{"type":"switch","id":"r1","platform":2,"base":0}') == Switch(
        id="r1", platform=2, base=0
    )
    assert decode(b'{"type":"ping"}') == Ping()


@pytest.mark.parametrize(
    "frame",
    [
        "",
        "{",
        '{"type":"switch","id":"x","platform":1}',
        '{"type":"switch","id":"' + "x" * 65 + '","platform":1,"base":0}',
        '{"type":"switch","id":"x","platform":0,"base":0}',
        '{"type":"switch","id":"x","platform":1,"base":1.5}',
        '{"type":"hello"}',
    ],
)
def test_decode_rejects_bad_frames(frame: str) -> None:
    """Malformed, incomplete, out-of-range and server-only messages raise BadMessage."""
    with pytest.raises(BadMessage):
        decode(frame)


def test_encode_is_compact_json_with_the_type_first() -> None:
    """Server messages encode to the documented JSON shape and decode back."""
    state = StateView(version=2, active=None, platforms=())
    message = StateMessage(state=state, cause=Cause(kind="switch", tab="t", request="r"))
    frame = encode(message)
    assert frame.startswith('{"type":"state"')
    assert json.loads(frame) == {
        "type": "state",
        "state": {"version": 2, "active": None, "platforms": []},
        "cause": {"kind": "switch", "tab": "t", "request": "r"},
    }
    assert decode_server(frame) == message
    rejected = Rejected(id="r", reason=RejectReason.STALE, message="m", state=None)
    assert json.loads(encode(rejected))["reason"] == "stale"


def test_hub_close_codes_are_in_the_application_range() -> None:
    """The hub's own close codes lie in 4000-4999; 4001 is the terminal session end."""
    own = [code for code in CloseCode if code >= 4000]
    assert all(4000 <= code <= 4999 for code in own)
    assert int(CloseCode.SESSION_ENDED) == 4001


def test_deeply_nested_frames_and_bodies_are_bad_messages_not_crashes() -> None:
    """Found by fuzzing: msgspec raises RecursionError past ~2,000 levels of nesting."""
    deep = '{"a":' * 5000 + "1" + "}" * 5000
    with pytest.raises(BadMessage, match="nested too deeply"):
        decode(deep)
    # A body is a plain struct: the first unknown field stops decoding, before any depth.
    with pytest.raises(BadMessage, match="unknown field"):
        decode_body(deep.encode(), LoginRequest)


def test_the_words_for_an_ended_session_are_the_same_in_the_hub_and_the_client() -> None:
    """navigation.js shows its own copy of the words when the hub gave none (a 401, a bare
    4001): it must say what session_ended says, for every reason, and the docs' words."""
    source = (Path(__file__).resolve().parents[2] / "client" / "navigation.js").read_text()
    block = re.search(r"const ENDED_MESSAGES = Object\.freeze\(\{(.*?)\}\);", source, re.S)
    assert block is not None, "navigation.js has no ENDED_MESSAGES"
    client = dict(re.findall(r'(\w+): "([^"]*)"', block.group(1)))
    hub = {str(reason): words for reason, words in ENDED_WORDS.items()}
    assert client == hub == ENDED_WORDS_PROMISED
    for reason in SessionEndReason:
        assert SessionEnded.because(reason).message == ENDED_WORDS_PROMISED[reason.value]


def test_a_restart_window_reads_back_and_fits_a_close_frame() -> None:
    """The 1012's reason carries its window both ways, fits the 123 bytes a close frame's
    reason may hold at the largest window, and any other reason names none (navigation.js's
    restartWindowMs reads it the same way: tests/client/navigation.test.js)."""
    for window in (0, 1, 1500, 999_999_999):
        assert restart_window_ms(restart_reason(window)) == window
    assert len(restart_reason(999_999_999).encode()) <= 123
    for other in ("", "hub shutting down", "reconnect within -5 ms", "reconnect within 1e9 ms"):
        assert restart_window_ms(other) == 0


def test_no_id_or_line_ends_in_a_newline() -> None:
    """Python's $ (which msgspec's patterns use) also matches before a final newline: a
    request id, a tab id, an external id or a platform name ending in one passed, and a tab
    id of 64 characters and a newline reached a VARCHAR(64) on PostgreSQL (a helper's attack
    of the shared connections)."""
    for frame in (
        {"type": "switch", "id": "a\n", "platform": 1, "base": 0},
        {"type": "switch", "id": "a", "platform": 1, "base": 0, "tab": "m1\n"},
        {"type": "attach", "tab": "x" * 64 + "\n"},
        {"type": "detach", "tab": "m1\n"},
    ):
        with pytest.raises(BadMessage):
            decode(json.dumps(frame))
    assert decode(json.dumps({"type": "attach", "tab": "x" * 64})) == Attach(tab="x" * 64)
    for pattern in (LINE, USER_NAME, EXTERNAL_ID):
        assert re.search(pattern, "name\n") is None and re.search(pattern, "name")
